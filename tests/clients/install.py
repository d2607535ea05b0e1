"""Install pinned client packages into cached ``pip --target`` folders and run drivers with them.

Two majors of ``elasticsearch`` cannot share one interpreter, so each set goes into its own
folder under ``.inferq/clients/<name>-<hash of the pins>/`` (ignored by git; a rerun reuses it)
and drivers run as subprocesses of this venv's Python with that folder first on ``PYTHONPATH``.
Packages are installed with ``--no-deps``: everything else they import (urllib3, certifi,
python-dateutil, aiohttp, requests, tqdm, numpy, matplotlib, torch…) comes from the project venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".inferq" / "clients"

# name -> exact pins; eland also needs the es9 folder on its path (eland 9.x wants elasticsearch>=9)
PINS: dict[str, tuple[str, ...]] = {
    "es8": ("elasticsearch==8.19.3", "elastic-transport==8.19.0"),
    "es9": ("elasticsearch==9.5.1", "elastic-transport==9.4.2", "anyio==4.16.0", "sniffio==1.3.1"),
    "eland": ("eland==9.2.0", "pandas==2.3.3", "pytz==2026.6"),
}
PATHS: dict[str, tuple[str, ...]] = {"es8": ("es8",), "es9": ("es9",), "eland": ("eland", "es9")}
IMPORT_CHECK: dict[str, str] = {
    "es8": "import elasticsearch, elastic_transport; assert elasticsearch.__versionstr__.startswith('8.')",
    "es9": "import elasticsearch, elastic_transport; assert elasticsearch.__versionstr__.startswith('9.')",
    "eland": "import eland.common, elasticsearch; assert elasticsearch.__versionstr__.startswith('9.')",
}


def _folder(name: str) -> Path:
    digest = hashlib.sha256("\n".join(PINS[name]).encode()).hexdigest()[:10]
    return CACHE / f"{name}-{digest}"


def _install(name: str) -> Path:
    folder = _folder(name)
    stamp = folder / ".installed"
    if stamp.exists():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--no-compile", "--target", str(folder), *PINS[name]],
            check=False, capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(PINS[name])} failed:\n{done.stdout}\n{done.stderr}")
        stamp.write_text("\n".join(PINS[name]) + "\n")
    return folder


def ensure(name: str) -> list[Path]:
    """The PYTHONPATH folders for a client set, installing what is missing; checks the imports."""
    folders = [_install(part) for part in PATHS[name]]
    check = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK[name]], env=client_env(folders), check=False, capture_output=True, text=True,
        timeout=120,
    )
    if check.returncode != 0:
        raise RuntimeError(f"the {name} client set does not import:\n{check.stderr}")
    return folders


def client_env(folders: list[Path], extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([*(str(f) for f in folders), str(REPO)])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    env.update(extra or {})
    return env


def run_driver(
    module: str, args: list[str], folders: list[Path], *, timeout_s: float = 300, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``python -m <module> <args>``; the driver prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], env=client_env(folders, extra_env), check=False, capture_output=True,
        text=True, timeout=timeout_s, cwd=REPO,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"{module} failed (rc={done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
