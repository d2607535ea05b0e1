"""The hand-written baseline: the embedding server one writes in an afternoon.

aiohttp + transformers, no queue, no batching: each request is tokenized, run through the model
and mean-pooled (then L2-normalized, as all-MiniLM-L6-v2's sentence-transformers modules do) in
the event loop's default executor, one request per forward pass. It answers the same
``POST /_ml/trained_models/<id>/_infer`` body as inferq so the same wrk script drives both.

    python -m benchmarks.baseline_server --model-dir <hf folder> --port 9300
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

Encoder = Callable[[str], list[float]]
ENCODER = web.AppKey("encoder", object)


def build_encoder(model_dir: str) -> Encoder:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def encode(text: str) -> list[float]:
        inputs = tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        vector: list[float] = torch.nn.functional.normalize(pooled, dim=-1)[0].tolist()
        return vector

    encode("warm up")
    return encode


async def infer(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    encode: Encoder = request.app[ENCODER]  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    results = []
    for doc in body["docs"]:
        vector = await loop.run_in_executor(None, encode, str(doc["text_field"]))
        results.append({"predicted_value": vector})
    return web.json_response({"inference_results": results})


async def root(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(encode: Encoder) -> web.Application:
    app = web.Application()
    app[ENCODER] = encode
    app.router.add_get("/", root)
    app.router.add_post("/_ml/trained_models/{model_id}/_infer", infer)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    web.run_app(create_app(build_encoder(args.model_dir)), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
