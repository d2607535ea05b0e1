"""``inferq import``: trace a local Hugging Face folder as eland does, upload it over REST.

The definition goes up in 1 MiB raw parts (base64, as eland sends them) with a progress bar,
then the vocabulary; ``--start`` starts a deployment. Nothing is ever fetched from a hub.
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
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 300) -> None:
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
) -> int:
    if not os.path.isdir(path):
        print(f"inferq import: {path} is not a local model folder", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from workers.tracing import trace_hf_model

    client = RestClient(url, api_key)
    try:
        status, _ = client.call("GET", f"/_ml/trained_models/{model_id}", ok=(200, 404))
        if status == 200:
            if not clear_previous:
                print(f"inferq import: model [{model_id}] already exists (use --clear-previous)", file=sys.stderr)
                return 1
            client.call("POST", f"/_ml/trained_models/{model_id}/deployment/_stop?force=true")
            client.call("DELETE", f"/_ml/trained_models/{model_id}?force=true", ok=(200, 404))
        print(f"inferq import: tracing {path} for {task_type}", file=sys.stderr)
        traced = trace_hf_model(path, task_type, max_sequence_length=max_sequence_length)
        upload(client, model_id, traced.config, traced.torchscript, traced.vocabulary)
        if start:
            client.call("POST", f"/_ml/trained_models/{model_id}/deployment/_start?wait_for=started&timeout=60s")
            print(f"inferq import: [{model_id}] deployed", file=sys.stderr)
    except (UploadError, urllib.error.URLError, OSError) as exc:
        print(f"inferq import: {exc}", file=sys.stderr)
        return 1
    print(f"inferq import: [{model_id}] uploaded ({len(traced.torchscript)} bytes)", file=sys.stderr)
    return 0
