"""Runs a script with ``cronium`` available without an import, as Cronium scripts expect."""

import builtins
import runpy
import sys

from cronium import cronium

builtins.cronium = cronium
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, "/cronium")
runpy.run_path(script, run_name="__main__")
