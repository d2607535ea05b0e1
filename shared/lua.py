"""Lua scripts, composed from the fragments in ``shared/lua/``.

A fragment defines ``local function``s (``cache.lua``, ``stats.lua``, ``queue.lua``); a
script is fragments plus a small body, so the gateway's one-round-trip dispatch script can
use the cache and the stats code without copies of either.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def fragment(name: str) -> str:
    return (resources.files("shared") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def compose(*fragments: str, body: str) -> str:
    """Concatenate the named fragments, then ``body`` (which may call their functions)."""
    return "\n".join([*(fragment(name) for name in fragments), body])
