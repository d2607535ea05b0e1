"""A confined worker process writes only under its model directory (Landlock), in every thread
it starts afterwards; the check runs in a child process (confinement cannot be undone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workers.confinement import MAKE_ALL, REFER, REMOVE_FILE, TRUNCATE, WRITE_FILE, write_rights

CHILD = r"""
import sys, threading
from workers.confinement import confine_writes
models, outside = sys.argv[1], sys.argv[2]
result = confine_writes([models, "/dev"])
print("confined" if result.confined else "unconfined: " + result.detail)
open(models + "/model.pt", "wb").write(b"ok")
def attempt(path):
    try:
        open(path, "wb").write(b"x")
        print("wrote", path)
    except PermissionError:
        print("refused", path)
attempt(outside + "/escape")
thread = threading.Thread(target=attempt, args=(outside + "/from-a-thread",))
thread.start(); thread.join()
open("/dev/null", "wb").write(b"x")
"""


def test_writes_outside_the_model_directory_are_refused(tmp_path: Path) -> None:
    models, outside = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    outside.mkdir()
    done = subprocess.run([sys.executable, "-c", CHILD, str(models), str(outside)], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "confined", lines  # this kernel has Landlock (docs/security.md says what happens without)
    assert lines[1:] == [f"refused {outside}/escape", f"refused {outside}/from-a-thread"]
    assert (models / "model.pt").read_bytes() == b"ok"
    assert list(outside.iterdir()) == []


def test_write_rights_grow_with_the_abi() -> None:
    assert write_rights(1) == WRITE_FILE | 1 << 4 | REMOVE_FILE | MAKE_ALL
    assert write_rights(2) == write_rights(1) | REFER
    assert write_rights(3) == write_rights(2) | TRUNCATE == write_rights(7)
