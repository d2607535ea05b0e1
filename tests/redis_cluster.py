"""Start a private Redis Cluster on free ports: ``masters`` masters, ``replicas`` replicas each.

Every server is ``redis-server --cluster-enabled yes`` with its own folder, port and cluster
bus port (``--cluster-port``: both free ports, so nothing assumes ``port + 10000``); the
cluster is made with ``redis-cli --cluster create ... --cluster-yes`` and used once every
server says ``cluster_state:ok`` and agrees on who holds every slot. ``url`` is the
``redis+cluster://`` URL inferq takes. No persistence: a killed master's data lives on in its
replica only. Tear-down stops every server (those the test killed are skipped) and removes the
folders.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from tests.redis_server import free_port

NODE_TIMEOUT_MS = 1000  # a master unreachable this long is failed over (tests wait for it)


@dataclass
class ClusterServer:
    port: int
    proc: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=2)


@dataclass
class RedisClusterProcesses:
    servers: list[ClusterServer] = field(default_factory=list)
    workdir: str = ""

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    @property
    def alive(self) -> list[ClusterServer]:
        return [s for s in self.servers if s.proc.poll() is None]

    def masters(self) -> list[ClusterServer]:
        """The live servers that are masters now (a failover changes them)."""
        found = []
        for server in self.alive:
            with server.client() as client:
                if str(client.info("replication").get("role")) == "master":
                    found.append(server)
        return found

    def replicas_of(self, master: ClusterServer) -> list[ClusterServer]:
        with master.client() as client:
            info = client.info("replication")
        ports = {int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)}
        return [s for s in self.alive if s.port in ports]

    def master_of(self, key: str) -> ClusterServer:
        slot = key_slot(key)
        with self.alive[0].client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(s for s in self.alive if s.port == int(master[1]))
        raise LookupError(f"no master holds slot {slot}")

    def kill(self, server: ClusterServer) -> None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)

    def keys_by_master(self) -> dict[int, list[bytes]]:
        """Every key of every master, by the master's port (test code only: SCAN of the whole
        keyspace)."""
        found: dict[int, list[bytes]] = {}
        for server in self.masters():
            with server.client() as client:
                found[server.port] = sorted(client.scan_iter(count=1000))
        return found

    def keys(self) -> list[bytes]:
        return sorted(key for keys in self.keys_by_master().values() for key in keys)

    def flush(self) -> None:
        for server in self.masters():
            with server.client() as client:
                client.flushall()

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every live server says ``cluster_state:ok`` and they agree on the masters of all
        16384 slots, every one of them alive (after a kill: the failover has finished everywhere)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            try:
                views = set()
                for server in self.alive:
                    with server.client() as client:
                        info = client.execute_command("CLUSTER", "INFO")
                        text = info.decode() if isinstance(info, bytes) else str(info)
                        if "cluster_state:ok" not in text:
                            raise RuntimeError(f"{server.port}: {text.splitlines()[0]}")
                        slots = client.execute_command("CLUSTER", "SLOTS")
                        views.add(tuple(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots)))
                covered = sum(end - start + 1 for start, end, _ in next(iter(views))) if views else 0
                dead = {port for start, end, port in next(iter(views))} - {s.port for s in self.alive} if views else set()
                if len(views) == 1 and covered == 16384 and not dead:
                    return
                last = f"{len(views)} different slot maps, {covered} slots covered, dead masters {sorted(dead)}"
            except (redis.RedisError, RuntimeError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster is not ok: {last}")
            time.sleep(0.1)


def key_slot(key: str) -> int:
    from redis.crc import key_slot as crc_slot

    return int(crc_slot(key.encode()))


@contextmanager
def redis_cluster(masters: int = 3, replicas: int = 0) -> Iterator[RedisClusterProcesses]:
    """A fresh Redis Cluster of our own; see the module docstring."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server and redis-cli must be on PATH (make test installs them)")
    cluster = RedisClusterProcesses(workdir=tempfile.mkdtemp(prefix="inferq-redis-cluster-"))
    try:
        for i in range(masters * (1 + replicas)):
            port, bus_port = free_port(), free_port()
            folder = f"{cluster.workdir}/{i}"
            os.makedirs(folder)
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--cluster-port", str(bus_port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"{folder}/nodes.conf",
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
                 "--dir", folder, "--loglevel", "warning"],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            cluster.servers.append(ClusterServer(port, proc))
        for server in cluster.servers:
            _wait_ping(server)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in cluster.servers),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        cluster.wait_ok()
        if replicas:
            _wait_replicas_synced(cluster, masters * replicas)
        yield cluster
    finally:
        for server in cluster.servers:
            if server.proc.poll() is None:
                server.proc.terminate()
        for server in cluster.servers:
            try:
                server.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
        shutil.rmtree(cluster.workdir, ignore_errors=True)


def _wait_ping(server: ClusterServer, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    with server.client() as client:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.proc.poll() is not None:
                    raise
                time.sleep(0.05)


def _wait_replicas_synced(cluster: RedisClusterProcesses, expected: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        synced = 0
        for server in cluster.alive:
            with server.client() as client:
                info = client.info("replication")
                if str(info.get("role")) == "slave" and str(info.get("master_link_status")) == "up":
                    synced += 1
        if synced >= expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {synced} of {expected} replicas are in sync")
        time.sleep(0.1)
