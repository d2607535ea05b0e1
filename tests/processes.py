"""Processes read from ``/proc`` (Linux): what the cluster and shutdown tests check is left."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessEntry:
    pid: int
    state: str  # "Z": a zombie (exited, not reaped yet)
    ppid: int
    session_id: int


def processes() -> Iterator[ProcessEntry]:
    """Every process readable now (one that exits while listed is skipped)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = read_entry(int(entry))
            if found is not None:
                yield found


def read_entry(pid: int) -> ProcessEntry | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ")"
    except OSError:
        return None
    return ProcessEntry(pid, fields[0], int(fields[1]), int(fields[3]))


def children_of(pid: int) -> set[int]:
    return {p.pid for p in processes() if p.ppid == pid}


def session_members(sid: int) -> set[int]:
    """Live processes of the session ``sid`` (a cluster's children keep it: they only change group)."""
    return {p.pid for p in processes() if p.session_id == sid and p.state != "Z"}


def alive(pid: int) -> bool:
    entry = read_entry(pid)
    return entry is not None and entry.state != "Z"
