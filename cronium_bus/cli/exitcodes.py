"""Exit codes of ``cronium`` (documented in the README and ``cronium run --help``)."""

from __future__ import annotations

from typing import Final

OK: Final = 0
FAILURE: Final = 1  # a command failed (unknown execution, degraded stack, ...)
USAGE: Final = 2  # bad flags or input; also a request the dispatcher rejected
OUTPUT_LIMIT: Final = 122  # the script printed more than the output cap
TIMED_OUT: Final = 124  # as timeout(1)
INFRASTRUCTURE: Final = 125  # runner, engine or image failed; execution lost (as docker run)
CANCELLED: Final = 130  # as a process stopped by Ctrl-C
OOM: Final = 137  # killed for exceeding its memory limit (128 + SIGKILL)
UNAVAILABLE: Final = 69  # NATS not reachable (EX_UNAVAILABLE)
PERMISSION: Final = 77  # the server or the service refused the action (EX_NOPERM)

TABLE: Final = f"""\
exit codes:
  N     the script's own exit code (0 on success)
  {USAGE}     the request was rejected (the reason is printed), or bad flags
  {UNAVAILABLE}    the stack is not reachable (start it with `cronium up`)
  {PERMISSION}    refused for lack of permission (credentials refused, or a role that may not)
  {OUTPUT_LIMIT}   the script printed more than the output cap and was stopped
  {TIMED_OUT}   the script ran past --timeout and was stopped
  {INFRASTRUCTURE}   infrastructure error: runner, Docker engine or image failed, or runner lost
  {CANCELLED}   the execution was cancelled
  {OOM}   the script was killed for exceeding --memory
"""
