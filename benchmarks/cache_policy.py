"""Hit ratios of the result cache's policies (lfu, lru) on replayed workloads, against Redis.

Workloads (seeded, so runs are comparable):
- ``zipf``: requests over ``--keys`` distinct keys drawn from a Zipf law (exponent ``--zipf-s``);
- ``zipf+scan``: the same, with runs of ``--scan-run`` sequential one-time keys making up
  ``--scan-fraction`` of the requests (a bulk re-ingest streaming through while queries repeat);
- ``zipf-shift``: Zipf, but which keys are popular is reshuffled every ``--shift-every`` requests.

Each key has a value size drawn once, uniformly in [--min-value-bytes, --max-value-bytes]. Budgets
are fractions of the working set (the accounted bytes of every distinct Zipf key). Each request is
a read-through: ``cache_get``, and on a miss ``cache_put``, the functions of the real Lua fragment
that ``DISPATCH`` and ``COMPLETE`` run; requests go to Redis in batches, one script call a batch
(``REPLAY``, its keys and arguments declared like ``shared.queue``'s), which keeps the replay exact
(every request sees every earlier one) and fast. Prints a table and writes
``benchmarks/results/cache_policy.json``.

Keys: the caches of (deployment ``bench-<workload>``, node ``<policy>-<budget>``), cleared after
each run (``shared.queue.clear``). ``--calibrate`` instead fills caches of several value-size
mixes through ``COMPLETE`` (``tests/cache_driver.py``) and prints the per-entry overhead constant
that would make the accounting equal Redis' ``MEMORY USAGE``.

    python -m benchmarks.cache_policy [--redis-url redis://...] [--requests 200000] ...
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import redis

from shared import queue
from shared.cache import POLICIES, cache_digest
from shared.lua import compose
from shared.queue import Script
from tests.cache_driver import SyncCache
from tests.redis_server import private_redis

# records: 38-character records, one a request: 32-char digest, 5-digit value size, hot flag.
REPLAY = Script(
    "replay",
    keys=("cache_index", "cache_meta", "cache_entries"),
    argv=("budget_bytes", "policy", "now_ms", "records"),
    fragments=("cache",),
    body="""
local budget, now = tonumber(budget_bytes), tonumber(now_ms)
local headroom = cache_headroom(0, now)
local hits, hot_hits = 0, 0
for at = 1, #records, 38 do
  local digest = string.sub(records, at, at + 31)
  if cache_get(cache_index, cache_meta, cache_entries, digest, policy, now) then
    hits = hits + 1
    if string.sub(records, at + 37, at + 37) == "1" then hot_hits = hot_hits + 1 end
  else
    local size = tonumber(string.sub(records, at + 32, at + 36))
    cache_put(cache_index, cache_meta, cache_entries, digest, string.rep("v", size), budget, policy, now, headroom)
  end
end
return {hits, hot_hits}
""",
)
FOOTPRINTS_BODY = """
local total = 0
for i = 1, #ARGV, 2 do
  total = total + cache_entry_footprint(tonumber(ARGV[i + 1]), #ARGV[i])
end
return total
"""
OVERHEAD_BODY = "return cache_overhead_bytes()"


@dataclass(frozen=True)
class Workload:
    name: str
    key_ids: np.ndarray  # int64 per request; ids >= n_keys are one-time scan keys
    hot: np.ndarray  # bool per request: a Zipf request (not a scan key)


@dataclass(frozen=True)
class Result:
    workload: str
    policy: str
    budget_fraction: float
    budget_bytes: int
    requests: int
    hits: int
    hit_ratio: float
    hot_requests: int
    hot_hit_ratio: float
    max_hit_ratio: float
    evictions: int
    entries: int
    used_bytes: int
    seconds: float


def zipf_ranks(rng: np.random.Generator, n_keys: int, count: int, s: float) -> np.ndarray:
    """``count`` ranks in [0, n_keys) with P(rank k) proportional to 1 / (k + 1) ** s."""
    weights = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64) ** s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(count)), n_keys - 1)


def make_workloads(args: argparse.Namespace) -> list[Workload]:
    rng = np.random.default_rng(args.seed)
    n, total = args.keys, args.requests
    popularity = rng.permutation(n)  # rank -> key id, so ids say nothing about popularity
    zipf = popularity[zipf_ranks(rng, n, total, args.zipf_s)]

    scan_runs = int(total * args.scan_fraction) // args.scan_run
    zipf_part = popularity[zipf_ranks(rng, n, total - scan_runs * args.scan_run, args.zipf_s)]
    pieces: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    next_scan_id = n
    for run, chunk in enumerate(np.array_split(zipf_part, scan_runs + 1)):
        pieces.append(chunk)
        flags.append(np.ones(len(chunk), dtype=bool))
        if run < scan_runs:
            pieces.append(np.arange(next_scan_id, next_scan_id + args.scan_run))
            flags.append(np.zeros(args.scan_run, dtype=bool))
            next_scan_id += args.scan_run
    scan = np.concatenate(pieces)

    ranks = zipf_ranks(rng, n, total, args.zipf_s)
    shifted = np.empty(total, dtype=np.int64)
    for start in range(0, total, args.shift_every):
        order = rng.permutation(n)
        shifted[start : start + args.shift_every] = order[ranks[start : start + args.shift_every]]
    return [
        Workload("zipf", zipf, np.ones(total, dtype=bool)),
        Workload("zipf+scan", scan, np.concatenate(flags)),
        Workload("zipf-shift", shifted, np.ones(total, dtype=bool)),
    ]


class Replayer:
    def __init__(self, client: redis.Redis, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        rng = np.random.default_rng(args.seed + 1)
        self.sizes = rng.integers(args.min_value_bytes, args.max_value_bytes + 1, size=args.keys)
        self.digests = [cache_digest("bench", str(i)) for i in range(args.keys)]
        self.footprints = client.register_script(compose("cache", body=FOOTPRINTS_BODY))

    def key(self, key_id: int) -> tuple[str, int]:
        if key_id < self.args.keys:
            return self.digests[key_id], int(self.sizes[key_id])
        low, high = self.args.min_value_bytes, self.args.max_value_bytes
        size = low + key_id % (high - low + 1)
        return cache_digest("scan", str(key_id)), size

    def working_set_bytes(self) -> int:
        total = 0
        for start in range(0, self.args.keys, 2_000):
            argv: list[str | int] = []
            for i in range(start, min(start + 2_000, self.args.keys)):
                argv += [self.digests[i], int(self.sizes[i])]
            total += int(self.footprints(args=argv))
        return total

    def batches(self, workload: Workload) -> list[bytes]:
        """The replay script's records, ``--batch`` requests a call."""
        records: list[str] = []
        for key_id, is_hot in zip(workload.key_ids.tolist(), workload.hot.tolist(), strict=True):
            digest, size = self.key(key_id)
            records.append(f"{digest}{size:05d}{1 if is_hot else 0}")
        step = self.args.batch
        return ["".join(records[i : i + step]).encode() for i in range(0, len(records), step)]

    def run(
        self, workload: Workload, batches: list[bytes], policy: str, fraction: float, working_set: int
    ) -> Result:
        budget = max(int(working_set * fraction), 1)
        dn = (f"bench-{workload.name}", f"{policy}-{fraction}")
        queue.run(self.client, queue.clear(*dn))
        hits = hot_hits = 0
        now_ms = int(time.time() * 1000)
        started = time.perf_counter()
        ids, hot = workload.key_ids, workload.hot
        for batch in batches:
            replay = REPLAY.call(queue.cache_keys(*dn), (budget, policy, now_ms, batch))
            batch_hits, batch_hot_hits = queue.call_sync(self.client, replay)
            hits += int(batch_hits)
            hot_hits += int(batch_hot_hits)
        seconds = time.perf_counter() - started
        stats = SyncCache(self.client, *dn, budget_bytes=budget, policy=policy).stats()  # type: ignore[arg-type]
        queue.run(self.client, queue.clear(*dn))
        hot_requests = int(hot.sum())
        distinct = len(np.unique(ids))
        return Result(
            workload=workload.name,
            policy=policy,
            budget_fraction=fraction,
            budget_bytes=budget,
            requests=len(ids),
            hits=hits,
            hit_ratio=hits / len(ids),
            hot_requests=hot_requests,
            hot_hit_ratio=hot_hits / max(hot_requests, 1),
            max_hit_ratio=1 - distinct / len(ids),
            evictions=stats.evictions,
            entries=stats.entries,
            used_bytes=stats.used_bytes,
            seconds=round(seconds, 2),
        )


def print_table(results: Sequence[Result], policies: Sequence[str]) -> None:
    header = (
        f"{'workload':<11} {'budget':>6} {'budget MiB':>10} "
        + " ".join(f"{p + ' hit':>8} {p + ' hot':>8}" for p in policies)
        + f" {'max hit':>8}"
    )
    print(header)
    print("-" * len(header))
    rows: dict[tuple[str, float], dict[str, Result]] = {}
    for r in results:
        rows.setdefault((r.workload, r.budget_fraction), {})[r.policy] = r
    for (workload, fraction), by_policy in rows.items():
        first = next(iter(by_policy.values()))
        cells = " ".join(
            f"{by_policy[p].hit_ratio:>8.3f} {by_policy[p].hot_hit_ratio:>8.3f}" for p in policies
        )
        budget_mib = first.budget_bytes / 2**20
        print(f"{workload:<11} {fraction:>6.0%} {budget_mib:>10.2f} {cells} {first.max_hit_ratio:>8.3f}")


def calibrate(client: redis.Redis) -> None:
    """Print the per-entry overhead that would make meta.bytes equal sum(MEMORY USAGE)."""
    constant = int(client.eval(compose("cache", body=OVERHEAD_BODY), 0))
    rng = np.random.default_rng(7)
    print(f"cache_overhead_bytes() = {constant}; redis {client.info('server')['redis_version']}")
    print(
        f"{'values (bytes)':<16} {'entries':>7} {'accounted':>10} {'redis':>10} {'error':>7} "
        f"{'ideal constant':>15}"
    )
    for low, high in [(1, 40), (50, 200), (200, 2_000), (2_000, 8_000), (20_000, 60_000)]:
        for entries in (200, 1_000, 3_000):
            cache = SyncCache(client, "calibrate", f"{low}-{high}-{entries}", budget_bytes=10**12)
            for i in range(entries):
                cache.put(cache_digest(str(i)), b"v" * int(rng.integers(low, high + 1)))
            footprint = cache.footprint()
            ideal = constant + (footprint.redis_bytes - footprint.accounted_bytes) / entries
            error = (footprint.accounted_bytes - footprint.redis_bytes) / footprint.redis_bytes
            print(
                f"{f'{low}-{high}':<16} {entries:>7} {footprint.accounted_bytes:>10} "
                f"{footprint.redis_bytes:>10} {error:>+7.2%} {ideal:>15.1f}"
            )
            cache.clear()


@contextmanager
def redis_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with private_redis() as private_url:
            yield private_url


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default=None, help="default: a private redis-server")
    parser.add_argument("--keys", type=int, default=20_000, help="distinct Zipf keys")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--zipf-s", type=float, default=1.0)
    parser.add_argument("--min-value-bytes", type=int, default=200)
    parser.add_argument("--max-value-bytes", type=int, default=2_000)
    parser.add_argument("--scan-fraction", type=float, default=0.3)
    parser.add_argument("--scan-run", type=int, default=2_000)
    parser.add_argument("--shift-every", type=int, default=50_000)
    parser.add_argument("--budgets", default="0.01,0.1,0.5", help="fractions of the working set")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--batch", type=int, default=2_000, help="requests per script call")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_policy.json"))
    parser.add_argument("--calibrate", action="store_true", help="measure the overhead constant instead")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0 < args.min_value_bytes <= args.max_value_bytes < 100_000:
        raise SystemExit("value sizes must satisfy 0 < --min-value-bytes <= --max-value-bytes < 100000")
    with redis_url(args.redis_url) as url:
        client = redis.Redis.from_url(url)
        try:
            if args.calibrate:
                calibrate(client)
                return
            policies = args.policies.split(",")
            fractions = [float(f) for f in args.budgets.split(",")]
            started = time.perf_counter()
            workloads = make_workloads(args)
            replayer = Replayer(client, args)
            working_set = replayer.working_set_bytes()
            print(
                f"{args.keys} keys, {args.requests} requests per workload, Zipf s={args.zipf_s}, values "
                f"{args.min_value_bytes}-{args.max_value_bytes} B, scan {args.scan_fraction:.0%} in runs of "
                f"{args.scan_run}, shift every {args.shift_every}; "
                f"working set {working_set / 2**20:.2f} MiB; "
                f"redis {client.info('server')['redis_version']}"
            )
            results = []
            for workload in workloads:
                batches = replayer.batches(workload)
                for fraction in fractions:
                    for policy in policies:
                        results.append(replayer.run(workload, batches, policy, fraction, working_set))
            elapsed = time.perf_counter() - started
            print_table(results, policies)
            print(
                f"(hit = all requests, hot = the Zipf requests only, max hit = 1 - distinct/requests; "
                f"{elapsed:.1f} s)"
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            report = {
                "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "working_set_bytes": working_set,
                "redis_version": client.info("server")["redis_version"],
                "machine": platform.machine(),
                "elapsed_s": round(elapsed, 1),
                "results": [asdict(r) for r in results],
            }
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.out}")
        finally:
            client.close()


if __name__ == "__main__":
    main()
