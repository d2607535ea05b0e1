"""docs/protocol.md's script table is generated from ``shared.queue``'s field lists (the one place
each script's KEYS and ARGV are declared); this test fails when they drift apart. Regenerate
with ``python -m tests.unit.test_protocol_doc``."""

from __future__ import annotations

import re
from pathlib import Path

from redis.crc import key_slot

from shared import keys, queue

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"


def scripts_table() -> str:
    rows = ["| script | KEYS (one `{dep\\|node}` slot) | ARGV | returns |", "| --- | --- | --- | --- |"]
    for script in queue.SCRIPTS:
        keys_ = ", ".join(f"`{k}`" for k in script.keys) + (f", then {script.more_keys}" if script.more_keys else "")
        argv = ", ".join(f"`{a}`" for a in script.argv) or "none"
        if script.more_argv:
            argv += f", then {script.more_argv}"
        returns = script.returns.replace("|", "\\|")
        rows.append(f"| `{script.name.upper()}` | {keys_} | {argv} | {returns} |")
    return "\n".join(rows) + "\n"


def test_the_document_lists_every_script_as_declared() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    match = re.search(r"<!-- scripts-table -->\n(.*?)<!-- /scripts-table -->", text, re.S)
    assert match, "docs/protocol.md has no scripts-table block"
    assert match.group(1) == scripts_table(), "run: python -m tests.unit.test_protocol_doc"


def test_the_documents_dispatch_body_is_the_scripts() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    match = re.search(r"```lua dispatch-body\n(.*?)```", text, re.S)
    assert match
    assert match.group(1).split() == f"{queue.DISPATCH.prelude}\n{queue.DISPATCH.body}".split()


def test_each_scripts_keys_share_one_slot() -> None:
    calls = [
        queue.DISPATCH.call(queue.dispatch_keys("dep-1", "node-1", queue.BULK), (0,) * 7),
        queue.Completion(1, "lfu", 1, 1, 1, 1.0, 0).call("dep-1", "node-1", "a0"),
        queue.figures_call("dep-1", "node-1", [b"a0", b"a3"]),
        queue.CLEAR.call(queue.cache_keys("dep-1", "node-1"), ()),
    ]
    for call in calls:
        assert len({key_slot(k.encode()) for k in call.keys}) == 1, call.script.name


def test_control_plane_keys_share_one_slot_and_per_node_keys_spread() -> None:
    control = [keys.MODELS, keys.DEPLOYMENTS, keys.NODES, keys.PLANNER_LEASE, keys.EVENTS, keys.STATE_VERSION,
               keys.API_KEYS, keys.API_KEY_EVENTS, keys.INFERENCE_ENDPOINTS, keys.MODEL_ALIASES, keys.METRICS_GATEWAY,
               keys.METRICS_PLANNER, keys.deployment("d"), keys.deployment_nodes("d"), keys.routes("d"),
               keys.node_info("n"), keys.node_heartbeat("n"), keys.node_deployments("n"), keys.inference_endpoint("i")]  # fmt: skip
    assert len({key_slot(k.encode()) for k in control}) == 1
    spread = {key_slot(keys.queue(f"dep-{d}", f"node-{n}").encode()) for d in range(4) for n in range(4)}
    assert len(spread) == 16


def test_only_the_protocol_package_builds_request_path_keys_and_script_calls() -> None:
    """Queue, processing, stats, cache and reply keys, and script calls, are built in ``shared/``
    (``shared.queue`` owns them); the gateway, the workers and the composition root call it. The
    one script outside is the planner lease's release (one control-plane key, ``gateway/lease.py``)."""
    pattern = re.compile(
        r"keys\.(queue|bulk_queue|processing|stats|cache_\w+|gateway_replies|dn_\w+)\("
        r"|evalsha|register_script|(client|redis|pipe)\.eval\("
    )
    found = []
    for package in ("gateway", "workers", "inferq"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = re.sub(r"``[^`]*``", "", line.split("#", 1)[0])  # docs name keys, code builds them
                if pattern.search(code):
                    found.append(f"{path.relative_to(ROOT)}:{number}")
    assert [f for f in found if not f.startswith("gateway/lease.py:")] == []


if __name__ == "__main__":
    print(scripts_table(), end="")
