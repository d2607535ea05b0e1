"""The README, run: every fenced block whose info string is ``sh test`` or ``python test``,
in order, against ``inferq cluster --nodes 2 --demo-model`` (what ``make run`` runs, with its
private redis-server), so the first hour a newcomer spends with it cannot rot.

``sh test exit=N``: the block must end with status N. Blocks run in a temporary folder that
holds links to this venv (``.venv``) and ``examples/``, so they write nothing into the
checkout; the gateway and Redis addresses of the README (127.0.0.1:9200, 127.0.0.1:6380/0)
are swapped for the test cluster's. Python blocks get the ``elasticsearch`` 9.x client on
their path (``tests/clients/install.py``; the README tells a reader to pip-install it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.install import client_env, ensure
from tests.redis_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(sh|python) test(?: exit=(\d+))?\n(.*?)^```\n(?:\n```text\n(.*?)^```$)?", re.MULTILINE | re.DOTALL)
README_GATEWAY = "127.0.0.1:9200"
README_REDIS = "redis://127.0.0.1:6380/0"
BLOCK_TIMEOUT_S = 180


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    exit_code: int
    line: int
    output: str  # a ```text block right after it: every line must be in what the block printed


def readme_blocks(text: str) -> list[Block]:
    return [
        Block(m.group(1), m.group(3), int(m.group(2) or 0), text.count("\n", 0, m.start()) + 1, m.group(4) or "")
        for m in FENCE.finditer(text)
    ]


def test_blocks_are_found_with_their_expected_status_and_output() -> None:
    blocks = readme_blocks("x\n```sh test\necho a\n```\n```sh\nnot run\n```\n```python test\nprint(1)\n```\n"
                           "```sh test exit=1\nfalse\n```\n\n```text\nan error\n```\n")  # fmt: skip
    assert [(b.language, b.code, b.exit_code, b.line, b.output) for b in blocks] == [
        ("sh", "echo a\n", 0, 2, ""), ("python", "print(1)\n", 0, 8, ""), ("sh", "false\n", 1, 11, "an error\n")
    ]


@dataclass(frozen=True)
class Cluster:
    gateway: str
    redis_url: str


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    log = tmp_path_factory.mktemp("make-run") / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferq.cli", "cluster", "--nodes", "2", "--demo-model", "--port", str(port)],
            env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        began, line = time.monotonic(), ""
        while "inferq ready" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"the cluster exited before it was ready:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - began < 300, "the cluster was not ready within 300 s"
        print(f"make run: ready after {time.monotonic() - began:.1f}s: {line.strip()}")
        gateway = re.search(r"gateway http://(\S+?),", line)
        redis_url = re.search(r"redis (redis://\S+)", line)
        assert gateway is not None and redis_url is not None, line
        yield Cluster(gateway.group(1), redis_url.group(1))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=30)
        proc.stdout.close()


def test_every_runnable_block_of_the_readme(make_run: Cluster, tmp_path: Path) -> None:
    blocks = readme_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 8 and {b.language for b in blocks} == {"sh", "python"}
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    python_env = client_env(ensure("es9"))
    shell_env = {
        **os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
        "INFERQ_URL": f"http://{make_run.gateway}",  # what `inferq import` defaults to: the README's 9200
    }  # fmt: skip
    began = time.monotonic()
    for block in blocks:
        code, expected = (
            text.replace(README_GATEWAY, make_run.gateway).replace(README_REDIS, make_run.redis_url)
            for text in (block.code, block.output)
        )
        if block.language == "sh":
            argv, env = ["bash", "-euo", "pipefail", "-c", code], shell_env
        else:
            argv, env = [sys.executable, "-c", code], python_env
        block_began = time.monotonic()
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        print(f"README line {block.line} ({block.language}, {time.monotonic() - block_began:.1f}s): {done.stdout.strip()[:200]}")
        assert done.returncode == block.exit_code, (
            f"README line {block.line}: exit {done.returncode}, expected {block.exit_code}\n"
            f"--- block\n{code}--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
        for line in expected.splitlines():
            assert line in done.stdout + done.stderr, f"README line {block.line}: no [{line}] in\n{done.stderr[-3000:]}"
    print(f"README blocks: {len(blocks)} in {time.monotonic() - began:.1f}s")
