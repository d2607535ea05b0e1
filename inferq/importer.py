"""``inferq import``: trace a local Hugging Face folder as eland does, upload it over REST.

The definition goes up in 1 MiB raw parts (base64, as eland sends them) with a progress bar,
then the vocabulary; ``--start`` starts a deployment. Nothing is ever fetched from a hub.

What can fail in milliseconds is checked before tracing, which takes seconds (``preflight``):
the API key's privileges (``_has_privileges``), an existing model, and with ``--start`` a free
processor (``_ml/info`` against the deployments' allocations in ``_ml/trained_models/_stats``).
Every failure says what to do next; a model uploaded but not started says how to start or
remove it.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sys
import urllib.error
import urllib.request
from typing import Any

CHUNK_BYTES = 1024 * 1024


class UploadError(RuntimeError):
    pass


class RestClient:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 330) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"ApiKey {api_key}"
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, payload = response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read() or b"{}")
        if status not in ok:
            reason = payload.get("error", {}).get("reason", payload) if isinstance(payload, dict) else payload
            raise UploadError(f"{method} {path} -> {status}: {reason}")
        return status, payload


def upload(
    client: RestClient,
    model_id: str,
    config: dict[str, Any],
    definition: bytes,
    vocabulary: dict[str, Any],
    *,
    progress: bool = True,
) -> None:
    client.call("PUT", f"/_ml/trained_models/{model_id}", config)
    total_parts = max(1, math.ceil(len(definition) / CHUNK_BYTES))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(definition), unit="B", unit_scale=True, desc=f"uploading {model_id}", file=sys.stderr)
    for part in range(total_parts):
        chunk = definition[part * CHUNK_BYTES : (part + 1) * CHUNK_BYTES]
        client.call(
            "PUT",
            f"/_ml/trained_models/{model_id}/definition/{part}",
            {
                "definition": base64.b64encode(chunk).decode(),
                "total_definition_length": len(definition),
                "total_parts": total_parts,
            },
        )
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    client.call("PUT", f"/_ml/trained_models/{model_id}/vocabulary", vocabulary)


# What an import does, as Elasticsearch action names (asked of ``_has_privileges`` first).
UPLOAD_ACTIONS = (
    "cluster:admin/xpack/ml/inference/put",
    "cluster:admin/xpack/ml/trained_models/part/put",
    "cluster:admin/xpack/ml/trained_models/vocabulary/put",
)
START_ACTION = "cluster:admin/xpack/ml/trained_models/deployment/start"
CLEAR_ACTIONS = ("cluster:admin/xpack/ml/trained_models/deployment/stop", "cluster:admin/xpack/ml/inference/delete")


def required_actions(*, start: bool, clear_previous: bool) -> list[str]:
    return [*UPLOAD_ACTIONS, *((START_ACTION,) if start else ()), *(CLEAR_ACTIONS if clear_previous else ())]


def privilege_problem(answer: dict[str, Any], key_hint: str) -> str | None:
    """A ``_has_privileges`` answer → what to tell the user, or None when every action is allowed."""
    missing = [action for action, held in (answer.get("cluster") or {}).items() if not held]
    if answer.get("has_all_requested", not missing):
        return None
    return (
        f"the API key {key_hint}may not {', '.join(missing)}; importing needs the cluster privilege "
        "[manage_ml] (create a key with role_descriptors {\"r\": {\"cluster\": [\"manage_ml\"]}}). "
        "Nothing was traced or uploaded."
    )


def capacity_problem(info: dict[str, Any], stats: dict[str, Any], *, url: str, replacing: str | None) -> str | None:
    """Whether one more allocation of one thread fits, from ``GET _ml/info`` and ``GET
    _ml/trained_models/_stats``: None when it does, else a message naming the ways out.

    ``replacing``: a deployment about to be stopped (``--clear-previous``) frees what it holds."""
    limits = info.get("limits") or {}
    total = int(limits.get("total_ml_processors", 0))
    if total == 0:
        return (
            "no worker node is running, so no deployment can start. Start one "
            "(`inferq worker --node-id node-1 --processors 2`, or `make run`), or import without --start. "
            "Nothing was traced or uploaded."
        )
    used: dict[str, int] = {}
    for entry in stats.get("trained_model_stats") or []:
        deployment = entry.get("deployment_stats")
        if not deployment or deployment.get("deployment_id") == replacing or deployment.get("state") == "stopping":
            continue
        used[deployment["deployment_id"]] = int(deployment.get("number_of_allocations", 0)) * int(
            deployment.get("threads_per_allocation", 1)
        )
    if total - sum(used.values()) >= 1:
        return None
    holders = ", ".join(f"[{d}] {n}" for d, n in sorted(used.items()))
    busiest = max(used, key=lambda d: used[d]) if used else "<deployment>"
    base = f"{url}/_ml/trained_models/{busiest}/deployment"
    return (
        f"no processor is free for a new deployment: the worker nodes offer {total} and "
        f"deployments hold them all ({holders}). Nothing was traced or uploaded. Make room, then run "
        "this command again:\n"
        f"  - give a deployment fewer allocations: curl -XPOST '{base}/_update?number_of_allocations=1'\n"
        f"  - or stop one:                        curl -XPOST '{base}/_stop'\n"
        "  - or run nodes with more processors:  inferq cluster --processors 2 (INFERQ_PROCESSORS=2 make run)\n"
        "  - or import without --start and start the deployment later"
    )


def preflight(client: RestClient, *, api_key: str | None, model_id: str, start: bool, clear_previous: bool) -> str | None:
    """The checks that can fail in milliseconds, run before tracing (which takes seconds):
    the key's privileges, an existing model, and with ``start`` a free processor."""
    if api_key:
        status, answer = client.call(
            "POST",
            "/_security/user/_has_privileges",
            {"cluster": required_actions(start=start, clear_previous=clear_previous)},
            ok=(200, 400, 403, 500),
        )
        if status == 200:
            key_id = _key_id(api_key)
            problem = privilege_problem(answer, f"[{key_id}] " if key_id else "")
            if problem:
                return problem
    status, _ = client.call("GET", f"/_ml/trained_models/{model_id}", ok=(200, 404))
    if status == 200 and not clear_previous:
        return f"model [{model_id}] already exists (use --clear-previous to replace it, or another --model-id)"
    if start:
        _, info = client.call("GET", "/_ml/info")
        _, stats = client.call("GET", "/_ml/trained_models/_stats")
        return capacity_problem(info, stats, url=client.url, replacing=model_id if clear_previous else None)
    return None


def _key_id(api_key: str) -> str:
    try:
        return base64.b64decode(api_key, validate=True).decode().partition(":")[0]
    except ValueError:
        return ""


class _Steps:
    """A tqdm bar over the tracing steps (``inferq.tracing.TRACING_STEPS``)."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            from inferq.tracing import TRACING_STEPS

            self.bar = tqdm(total=len(TRACING_STEPS), desc=desc, file=sys.stderr, bar_format="{desc}: {n_fmt}/{total_fmt} {postfix} [{elapsed}]")
            self.done = 0

    def __call__(self, step: str) -> None:
        if self.bar is not None:
            if self.done:
                self.bar.update(1)
            self.done += 1
            self.bar.set_postfix_str(step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def import_model(
    path: str,
    *,
    model_id: str,
    task_type: str,
    url: str,
    api_key: str | None = None,
    start: bool = False,
    clear_previous: bool = False,
    max_sequence_length: int | None = None,
    progress: bool = True,
) -> int:
    if not os.path.isdir(path):
        print(f"inferq import: {path} is not a local model folder (download one first; see the README)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    client = RestClient(url, api_key)
    try:
        problem = preflight(client, api_key=api_key, model_id=model_id, start=start, clear_previous=clear_previous)
        if problem:
            print(f"inferq import: {problem}", file=sys.stderr)
            return 1
        if clear_previous:
            client.call("POST", f"/_ml/trained_models/{model_id}/deployment/_stop?force=true")
            client.call("DELETE", f"/_ml/trained_models/{model_id}?force=true", ok=(200, 404))
    except (UploadError, urllib.error.URLError, OSError) as exc:
        print(f"inferq import: {_unreachable(url, exc)}", file=sys.stderr)
        return 1
    from inferq.tracing import trace_hf_model

    steps = _Steps(progress, f"tracing {model_id}")
    try:
        traced = trace_hf_model(path, task_type, max_sequence_length=max_sequence_length, progress=steps)
    except (ValueError, TypeError, OSError) as exc:
        steps.close()
        print(f"inferq import: cannot trace {path} for {task_type}: {exc}", file=sys.stderr)
        return 1
    steps.close()
    try:
        upload(client, model_id, traced.config, traced.torchscript, traced.vocabulary, progress=progress)
    except (UploadError, urllib.error.URLError, OSError) as exc:
        print(
            f"inferq import: uploading [{model_id}] failed: {_unreachable(url, exc)}. A partial upload cannot be "
            f"started; remove it with: curl -XDELETE '{client.url}/_ml/trained_models/{model_id}'",
            file=sys.stderr,
        )
        return 1
    print(f"inferq import: [{model_id}] uploaded ({len(traced.torchscript)} bytes)", file=sys.stderr)
    if not start:
        return 0
    try:
        client.call("POST", f"/_ml/trained_models/{model_id}/deployment/_start?wait_for=started&timeout=300s")
    except (UploadError, urllib.error.URLError, OSError) as exc:
        base = f"{client.url}/_ml/trained_models/{model_id}"
        print(
            f"inferq import: [{model_id}] is uploaded but not started: {exc}\n"
            f"  start it once there is room: curl -XPOST '{base}/deployment/_start'\n"
            f"  or remove it:                curl -XDELETE '{base}'",
            file=sys.stderr,
        )
        return 1
    print(f"inferq import: [{model_id}] started", file=sys.stderr)
    return 0


def _unreachable(url: str, exc: Exception) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return f"cannot reach the gateway at {url} ({exc.reason}); is it running? (--url / INFERQ_URL)"
    return str(exc)
