"""Drive a cluster with eland's upload path (``eland.ml.pytorch.PyTorchModel``) without torch.

eland's ``eland.ml.pytorch`` package ``__init__`` imports torch, transformers and
sentence-transformers; its upload code does not. As clients.md §7.4 describes, a bare package
module stands in for that ``__init__`` so ``_pytorch_model`` and ``nlp_ml_model`` load alone, and
an import hook refuses torch & co., so this run proves the upload path needs none of them.
Prints one JSON line of recorded steps (the test makes the assertions).

    python -m tests.clients.eland_driver --url URL --model-dir DIR --model-id ID --big-file F
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import importlib.machinery
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REFUSED = ("torch", "transformers", "sentence_transformers")


class RefuseHeavyImports(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"{fullname} is refused in this driver", name=fullname)
        return None


def load_eland() -> tuple[Any, Any]:
    sys.meta_path.insert(0, RefuseHeavyImports())
    import eland.ml

    bare = types.ModuleType("eland.ml.pytorch")
    bare.__path__ = [str(Path(eland.ml.__file__).parent / "pytorch")]
    sys.modules["eland.ml.pytorch"] = bare
    from eland.ml.pytorch import _pytorch_model, nlp_ml_model

    return _pytorch_model.PyTorchModel, nlp_ml_model


def eland_config(nlp: Any, config: dict[str, Any], description: str) -> Any:
    """The traced model's config, rebuilt with eland's own classes (what its CLI sends)."""
    options = config["inference_config"]["text_embedding"]
    bert = options["tokenization"]["bert"]
    return nlp.NlpTrainedModelConfig(
        description=description,
        inference_config=nlp.TextEmbeddingInferenceOptions(
            tokenization=nlp.NlpBertTokenizationConfig(**bert), embedding_size=options.get("embedding_size")
        ),
        input=nlp.TrainedModelInput(field_names=config["input"]["field_names"]),
        metadata=config.get("metadata"),
        model_type="pytorch",
        prefix_strings=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--big-file", type=Path, required=True)
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()

    PyTorchModel, nlp = load_eland()
    from elasticsearch import Elasticsearch

    from tests.clients import SAMPLE_TEXTS
    from tests.clients.es_driver import Recorder

    auth = {"api_key": args.api_key} if args.api_key else {}
    es = Elasticsearch(args.url, request_timeout=300, **auth)
    rec = Recorder()
    config = json.loads((args.model_dir / "config.json").read_text())
    model = PyTorchModel(es, args.model_id)
    big = PyTorchModel(es, args.model_id + "-big")

    async def scenario() -> None:
        await rec(
            "import_model",
            lambda: model.import_model(
                model_path=str(args.model_dir / "model.pt"),
                config_path=None,
                vocab_path=str(args.model_dir / "vocabulary.json"),
                config=eland_config(nlp, config, "imported by eland"),
                chunk_size=64 * 1024,
            ),
        )
        await rec("get", lambda: es.ml.get_trained_models(model_id=args.model_id, include="definition_status"))
        # eland's default 1 MiB chunks: ~1.4 MB JSON bodies per part
        await rec("big_config", lambda: big.put_config(config=eland_config(nlp, config, "chunking check")))
        await rec("big_parts", lambda: big.put_model(str(args.big_file)))
        await rec("big_get", lambda: es.ml.get_trained_models(model_id=args.model_id + "-big", include="definition_status"))
        await rec("start", lambda: model.start())
        await rec("infer", lambda: model.infer([{"text_field": t} for t in SAMPLE_TEXTS]))
        await rec("list", lambda: sorted(PyTorchModel.list(es)))
        await rec("stop", lambda: model.stop())
        await rec("delete", lambda: model.delete())
        await rec("delete_again", lambda: model.delete())  # eland ignores the 404
        await rec("delete_big", lambda: big.delete())
        await rec("list_after", lambda: sorted(PyTorchModel.list(es)))

    try:
        asyncio.run(scenario())
    finally:
        es.close()
    refused_loaded = sorted(m for m in sys.modules if m.split(".")[0] in REFUSED)
    print(json.dumps({"steps": rec.steps, "heavy_modules_loaded": refused_loaded}))


if __name__ == "__main__":
    main()
