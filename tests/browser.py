"""Debian's headless ``chromium`` for the status page tests: taken from PATH, else installed with
apt-get when we are root (as ``scripts/bootstrap.sh`` does), with a fresh profile per run.

``--virtual-time-budget`` lets the page run its timers (its polls) for that much virtual time
before the DOM is dumped or the screenshot taken; virtual time waits for pending fetches.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # ignored by git
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
TIMEOUT_S = 120


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
        found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("chromium is not on PATH (scripts/bootstrap.sh installs it)")
    return found


async def _run(url: str, *, budget_ms: int, extra: list[str]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="inferq-chromium-") as profile:
        argv = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=profile
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
        return out


async def dump_dom(url: str, *, budget_ms: int = 5000) -> str:
    """The page's DOM after ``budget_ms`` of virtual time."""
    return (await _run(url, budget_ms=budget_ms, extra=["--dump-dom"])).decode()


async def screenshot(url: str, path: Path, *, budget_ms: int = 5000, size: tuple[int, int] = (1280, 720)) -> Path:
    """A PNG of the page after ``budget_ms`` of virtual time, written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    await _run(url, budget_ms=budget_ms, extra=[f"--window-size={size[0]},{size[1]}", f"--screenshot={path.resolve()}"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path
