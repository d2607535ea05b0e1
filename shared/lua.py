"""Lua scripts, composed from the fragments in ``shared/lua/``, with their keys and arguments named.

A fragment defines ``local function``s (``cache.lua``, ``stats.lua``, ``queue.lua``); a
script is fragments plus a small body, so the gateway's one-round-trip dispatch script can
use the cache and the stats code without copies of either. A ``Script`` declares its ``KEYS``
and ``ARGV`` as field lists once: its body reads them as Lua locals of those names, its calls
(``Script.call``, the general encoder) and its hot-path packer (``Script.packer``) lay them out
from the same lists. ``shared.queue`` declares the request path's scripts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Any

from shared.redis_ops import Eval


@cache
def fragment(name: str) -> str:
    return (resources.files("shared") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def compose(*fragments: str, body: str) -> str:
    """Concatenate the named fragments, then ``body`` (which may call their functions)."""
    return "\n".join([*(fragment(name) for name in fragments), body])


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _bulk_string(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


@dataclass(frozen=True)
class Script:
    """A Lua script with its ``KEYS`` and ``ARGV`` named once.

    ``keys``/``argv``: the fixed fields, in order; the body reads each as a Lua local of that
    name (``KEYS[i]`` / ``ARGV[i]``, strings). ``more_keys``/``more_argv`` describe what may follow
    them (read as ``KEYS[#keys + 1 ...]`` / ``ARGV[#argv + 1 ...]``; ``first_more_key`` and
    ``first_more_arg`` are their Lua indexes)."""

    name: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    body: str
    fragments: tuple[str, ...] = ()
    more_keys: str = ""
    more_argv: str = ""
    returns: str = ""

    def __post_init__(self) -> None:
        names = self.keys + self.argv
        if len(set(names)) != len(names) or not all(_NAME.match(n) for n in names):
            raise ValueError(f"{self.name}: field names must be distinct Lua identifiers: {names}")

    @cached_property
    def prelude(self) -> str:
        lines = [f"local {n} = KEYS[{i}]" for i, n in enumerate(self.keys, 1)]
        lines += [f"local {n} = ARGV[{i}]" for i, n in enumerate(self.argv, 1)]
        lines += [f"local first_more_key, first_more_arg = {len(self.keys) + 1}, {len(self.argv) + 1}"]
        return "\n".join(lines)

    @cached_property
    def source(self) -> str:
        return compose(*self.fragments, body=f"{self.prelude}\n{self.body}")

    @cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    def call(
        self,
        key_values: Sequence[str],
        arg_values: Sequence[Any],
        more_keys: Sequence[str] = (),
        more_args: Sequence[Any] = (),
    ) -> Eval:
        """The general encoder: values in field order, checked against the field lists."""
        if len(key_values) != len(self.keys) or len(arg_values) != len(self.argv):
            raise ValueError(
                f"{self.name} takes KEYS {self.keys} and ARGV {self.argv}; "
                f"got {len(key_values)} keys and {len(arg_values)} arguments"
            )
        return Eval(self, (*key_values, *more_keys), (*arg_values, *more_args))

    def head(self, key_values: Sequence[str], more_args: int = 0) -> bytes:
        """Packed start of an ``EVALSHA`` with these keys, as RESP: ``Packer.pack`` of the ARGV
        (and ``more_args`` more arguments) completes it."""
        if len(key_values) != len(self.keys):
            raise ValueError(f"{self.name} takes KEYS {self.keys}")
        parts = [b"EVALSHA", self.sha.encode(), b"%d" % len(key_values), *(k.encode() for k in key_values)]
        return b"*%d\r\n" % (len(parts) + len(self.argv) + more_args) + b"".join(_bulk_string(p) for p in parts)

    @cached_property
    def packer(self) -> Packer:
        return Packer(self.argv)


class Packer:
    """The hot-path encoder of a script's ARGV: the values (bytes, in field order) as RESP bulk
    strings, in one format operation. Derived from the field list, never written by hand: the
    function is generated from it (one positional parameter per field, no loop per call)."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        names = [f"{n}_" for n in self.fields]
        layout = ", ".join(f"len({n}), {n}" for n in names)
        source = f"def pack({', '.join(names)}):\n    return FORMAT % ({layout},)\n"
        namespace: dict[str, Any] = {"FORMAT": b"$%d\r\n%b\r\n" * len(self.fields)}
        exec(compile(source, f"<packer {'/'.join(self.fields)}>", "exec"), namespace)  # noqa: S102  # generated from the field names only
        self.pack: Callable[..., bytes] = namespace["pack"]
