"""Workers run at a lower CPU priority than gateways (``INFERQ_WORKER_NICE``), in a real process."""

from __future__ import annotations

import os
import subprocess
import sys

from shared.settings import WorkerSettings

PROBE = "import os, sys; from workers.node import lower_priority; lower_priority(int(sys.argv[1])); print(os.nice(0))"


def niceness_after(increment: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, increment], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_the_worker_lowers_its_priority_by_the_setting() -> None:
    own = os.nice(0)
    assert niceness_after("10") == min(own + 10, 19)
    assert niceness_after("0") == own  # 0: left as it is


def test_the_default_increment_and_the_variable() -> None:
    assert WorkerSettings.from_env({}).nice == 10
    assert WorkerSettings.from_env({"INFERQ_WORKER_NICE": "0"}).nice == 0
