"""Runs a script with ``cronium`` available without an import, as Cronium scripts expect."""

import builtins
import sys

from cronium import cronium

builtins.cronium = cronium
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, "/cronium")
with open(script, "rb") as f:
    code = compile(f.read(), script, "exec")
del f
# as runpy.run_path would, without importing runpy (≈ 20 ms of every start)
exec(code, {"__name__": "__main__", "__file__": script, "__builtins__": builtins})
