"""Measuring tools of the throughput benchmark: workload texts, wrk runs, process CPU and RSS,
Redis command counts. No inferq logic here; ``benchmarks.throughput`` puts them together.

Redis keys: none written; ``INFO commandstats`` / ``INFO stats`` are read.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

WRK_SCRIPT = Path(__file__).parent / "wrk" / "infer.lua"

# Plain lower-case English words: every text is JSON-safe as it is (the wrk script splices it).
WORDS = (
    "the of and to in is was for on that with as by at from his her an which this are be or "
    "had not but were have one all their they has been its who more first new after two also "
    "other time would into when there some only than over most can many these them so then "
    "may about out year where city state world between during under each while both such "
    "school team season game played music film series album song river house church group "
    "company government system public north south national program history area known later "
    "queue cluster model inference batch token worker gateway latency throughput search vector "
    "embedding semantic document index shard replica node memory thread process request reply "
    "cache result server client network storage engine query ranking text language sentence "
    "word meaning similar distance weather market price energy water forest mountain island "
    "ocean travel train station airport bridge street garden library museum painting theatre"
).split()


def make_texts(count: int, seed: int, min_words: int = 8, max_words: int = 40) -> list[str]:
    """``count`` sentences of uniformly ``min_words``..``max_words`` words (seeded)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(count)]


def distinct_text(tag: str, n: int, texts: Sequence[str]) -> str:
    """The n-th text of a distinct run, exactly as ``wrk/infer.lua`` builds it."""
    return f"{tag} {n} {texts[n % len(texts)]}"


def write_texts(path: Path, texts: Iterable[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts))
    return path


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


# ---- wrk -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian's packages when absent and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("wrk is not installed: run `apt-get install -y wrk` (Debian/Ubuntu) as root")
    print("benchmark: wrk is missing; installing the Debian package with apt-get install -y wrk", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get install wrk did not put wrk on PATH")
    return found


@dataclass(frozen=True)
class WrkResult:
    connections: int
    requests: int
    duration_s: float
    status_200: int
    status_429: int
    status_other: int
    socket_errors: int
    latency_ms: dict[str, float]  # p50, p90, p99, p99_9, mean, max
    client_cpu_s: float  # wrk's own user + system CPU time

    @property
    def throughput_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok_per_s(self) -> float:
        return self.status_200 / self.duration_s if self.duration_s else 0.0

    @property
    def client_cpu_share(self) -> float:
        """wrk's CPU time over the run's wall time: 1.0 is one core kept busy."""
        return self.client_cpu_s / self.duration_s if self.duration_s else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "connections": self.connections,
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "throughput_per_s": round(self.throughput_per_s, 1),
            "status": {"200": self.status_200, "429": self.status_429, "other": self.status_other},
            "socket_errors": self.socket_errors,
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "client_cpu_s": round(self.client_cpu_s, 3),
            "client_cpu_share_of_one_core": round(self.client_cpu_share, 3),
        }


def run_wrk(
    url: str,
    texts_file: Path,
    *,
    mode: str,
    tag: str,
    connections: int,
    duration_s: float,
    threads: int = 1,
    repeat_count: int = 0,
    timeout_s: int = 30,
    body_format: str = "es",
) -> WrkResult:
    """One wrk run of ``wrk/infer.lua``; CPU time of the client comes from its rusage."""
    threads = max(1, min(threads, connections))
    argv = [
        ensure_wrk(), "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:g}s",
        "--timeout", f"{timeout_s}s", "--latency", "-s", str(WRK_SCRIPT), url,
        "--", str(texts_file), mode, tag, str(threads), str(repeat_count), body_format,
    ]  # fmt: skip
    out_path = texts_file.parent / f"wrk-{tag}.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    data = json.loads(line[len("WRK_JSON ") :])
    latency = {
        "p50": data["latency_p50_us"] / 1000,
        "p90": data["latency_p90_us"] / 1000,
        "p99": data["latency_p99_us"] / 1000,
        "p99_9": data["latency_p99_9_us"] / 1000,
        "mean": data["latency_mean_us"] / 1000,
        "max": data["latency_max_us"] / 1000,
    }
    return WrkResult(
        connections=connections,
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        status_200=int(data["status_200"]),
        status_429=int(data["status_429"]),
        status_other=int(data["status_other"]),
        socket_errors=sum(int(data[k]) for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")),
        latency_ms=latency,
        client_cpu_s=usage.ru_utime + usage.ru_stime,
    )


# ---- processes ---------------------------------------------------------------------------------

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process and its threads."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores summed."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _TICKS_PER_S, total / _TICKS_PER_S


@dataclass
class CpuMeter:
    """CPU seconds spent by named processes (and by the whole machine) between start and stop."""

    pids: Mapping[str, int]
    started: dict[str, float] = field(default_factory=dict)
    machine_started: tuple[float, float] = (0.0, 0.0)
    wall_started: float = 0.0

    def start(self) -> None:
        self.started = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        self.machine_started = machine_busy_s()
        self.wall_started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per process, ``machine_busy_s`` and ``machine_total_s`` (all cores), ``wall_s``."""
        spent = {name: process_cpu_s(pid) - self.started[name] for name, pid in self.pids.items()}
        busy, total = machine_busy_s()
        spent["machine_busy_s"] = busy - self.machine_started[0]
        spent["machine_total_s"] = total - self.machine_started[1]
        spent["wall_s"] = time.monotonic() - self.wall_started
        return spent


# ---- redis -----------------------------------------------------------------------------------


def redis_counters(client: redis.Redis) -> dict[str, int]:
    """Calls per command (``cmd:<name>``) and the server's read events (one per round trip)."""
    counters = {f"cmd:{name}": int(stats["calls"]) for name, stats in client.info("commandstats").items()}
    stats = client.info("stats")
    counters["reads_processed"] = int(stats.get("total_reads_processed", 0))
    counters["commands_processed"] = int(stats.get("total_commands_processed", 0))
    return {k.replace("cmdstat_", ""): v for k, v in counters.items()}


def counter_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
