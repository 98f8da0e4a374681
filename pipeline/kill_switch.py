"""A test hook: kill this process (SIGKILL: no cleanup, no `finally`) at a chosen point of a loop.

`IGLOSS_KILL_AT=<loop>:<k>` kills the process when the loop named <loop> has finished its k-th
item (scan or optimiser step, counted from 1). The fault suite (tests/test_kill.py) sets it to
prove, at fixed points rather than by wall-clock luck, that a killed stage leaves no stray file
inside a DVC output and that a rerun writes the same bytes as an uninterrupted run. Unset, as
always outside that suite, it does nothing.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "IGLOSS_KILL_AT"


def kill_point(loop: str, done: int) -> None:
    """Die here if `IGLOSS_KILL_AT` names this loop and this count of finished items."""
    if os.environ.get(KILL_AT) == f"{loop}:{done}":
        os.kill(os.getpid(), signal.SIGKILL)
