"""Benchmarks: ``python -m benchmarks.throughput`` (``make bench``), ``python -m benchmarks.cache_policy``."""
