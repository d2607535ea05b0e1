"""Confine a worker process's file-system writes with Landlock (Linux >= 5.13, no privileges).

A worker runs uploaded models. They are validated before they load (``shared.model_validation``);
this is the second wall: once ``confine_writes`` has run, the process and every thread it starts
later can create, write, truncate, rename or delete files only under the given directories (the
model directory, the temporary directory, ``/dev``), whatever code asks. Reading is not
restricted (Python and torch load libraries lazily from anywhere); network access is not
restricted here (Redis is the worker's job; docker-compose puts workers on a network with no
route outside). Without Landlock (another OS, an old kernel, seccomp forbidding it) nothing is
confined and ``confine_writes`` says so.

Call it before any thread starts: Landlock applies to the calling thread and what it spawns.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# <linux/landlock.h>; the syscall numbers are the same on x86_64 and arm64 (generic table).
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38
WRITE_FILE, REMOVE_DIR, REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
MAKE_ALL = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
REFER, TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class Confinement:
    confined: bool
    detail: str  # what is confined, or why nothing is


def write_rights(abi: int) -> int:
    """The write-like access rights this Landlock ABI knows (pure)."""
    rights = WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_ALL
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


def confine_writes(writable: Iterable[str]) -> Confinement:
    """Allow file-system writes only under ``writable`` (existing directories) from now on."""
    if not sys.platform.startswith("linux"):
        return Confinement(False, f"no Landlock on {sys.platform}")
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    if abi < 1:
        return Confinement(False, f"Landlock unavailable: {os.strerror(ctypes.get_errno())}")
    rights = write_rights(abi)
    attr = _RulesetAttr(handled_access_fs=rights)
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return Confinement(False, f"Landlock ruleset refused: {os.strerror(ctypes.get_errno())}")
    allowed: list[str] = []
    try:
        for path in sorted({os.path.realpath(p) for p in writable}):
            try:
                fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                beneath = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
                if libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH), ctypes.byref(beneath), ctypes.c_uint32(0)) == 0:
                    allowed.append(path)
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return Confinement(False, f"no_new_privs refused: {os.strerror(ctypes.get_errno())}")
        if libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return Confinement(False, f"Landlock restrict_self refused: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return Confinement(True, f"Landlock ABI {abi}: writes only under {', '.join(allowed)}")
