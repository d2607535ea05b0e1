"""eland drives the cluster unchanged.

- The upload path, ``eland.ml.pytorch.PyTorchModel``, with plain ``eland`` (no torch: the
  driver refuses to import it) and a model traced by the test: import_model, start, infer,
  list, stop, delete; plus eland's default 1 MiB chunking on a 2.5 MiB file.
- The ``eland_import_hub_model`` CLI itself, tracing a local tiny model folder with eland's own
  tracer and ``--start``. eland 9.2.0 pins ``torch==2.7.1`` in its ``pytorch`` extra, which cannot
  be resolved next to torch 2.13.0, so the extra is not installed: ``eland`` goes in without
  dependencies and uses the project venv's torch/transformers/sentence-transformers.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clients import SAMPLE_TEXTS, write_model_files
from tests.clients.install import client_env, ensure, run_driver
from tests.cluster import LocalCluster, infer, local_cluster, start, upload

pytestmark = pytest.mark.slow

MODEL_ID = "eland-emb"


@pytest.fixture(scope="module")
def eland_cluster(redis_url: str) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("node-1", 4)]) as running:
        yield running


@pytest.fixture(scope="module")
def eland_folders() -> list[Path]:
    return ensure("eland")


def reference_vectors(cluster: LocalCluster, model_id: str, traced: Any) -> list[list[float]]:
    """The model uploaded by inferq's own importer: the embeddings eland's upload must serve."""
    upload(cluster, model_id, traced)
    start(cluster, model_id)
    status, body = infer(cluster, model_id, list(SAMPLE_TEXTS))
    assert status == 200, body
    return [r["predicted_value"] for r in body["inference_results"]]


@pytest.fixture(scope="module")
def upload_run(
    eland_cluster: LocalCluster, eland_folders: list[Path], tiny_embedding_model: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    folder = write_model_files(tiny_embedding_model, tmp_path_factory.mktemp("eland-model"))
    big_file = folder / "big.pt"
    write_big_archive(big_file)
    return run_driver(
        "tests.clients.eland_driver",
        ["--url", eland_cluster.url, "--model-dir", str(folder), "--model-id", MODEL_ID, "--big-file", str(big_file)],
        eland_folders,
    )


def write_big_archive(path: Path) -> None:
    """A valid TorchScript archive of ~2.8 MB (three of eland's default 1 MiB chunks): random
    weights, which a zip cannot shrink. Uploads are validated, so random bytes would be refused."""
    import torch

    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(700_000))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight.mean()

    torch.jit.save(torch.jit.script(Big()), str(path))
    assert path.stat().st_size > 2 * 1024 * 1024


def value(run: dict[str, Any], step: str) -> Any:
    entry = run["steps"][step]
    assert "value" in entry, f"{step}: {entry}"
    return entry["value"]


def body(run: dict[str, Any], step: str) -> Any:
    entry = run["steps"][step]
    assert entry.get("status") == 200, f"{step}: {entry}"
    return entry["body"]


def test_upload_path_runs_without_torch(upload_run: dict[str, Any]) -> None:
    failures = {name: e for name, e in upload_run["steps"].items() if "value" not in e and "status" not in e}
    assert failures == {}
    assert upload_run["heavy_modules_loaded"] == []


def test_import_model_stores_a_complete_model(upload_run: dict[str, Any], tiny_embedding_model: Any) -> None:
    assert value(upload_run, "import_model") is None
    config = body(upload_run, "get")["trained_model_configs"][0]
    assert config["model_id"] == MODEL_ID and config["fully_defined"] is True
    assert config["description"] == "imported by eland"
    sent = tiny_embedding_model.config["inference_config"]["text_embedding"]
    stored = config["inference_config"]["text_embedding"]
    assert stored["embedding_size"] == sent["embedding_size"]
    assert stored["tokenization"]["bert"]["max_sequence_length"] == sent["tokenization"]["bert"]["max_sequence_length"]


def test_default_one_mib_chunks_are_accepted(upload_run: dict[str, Any]) -> None:
    assert value(upload_run, "big_parts") is None
    assert body(upload_run, "big_get")["trained_model_configs"][0]["fully_defined"] is True


def test_started_model_serves_the_same_embeddings(
    upload_run: dict[str, Any], eland_cluster: LocalCluster, tiny_embedding_model: Any
) -> None:
    expected = reference_vectors(eland_cluster, "eland-ref", tiny_embedding_model)
    assert value(upload_run, "start") is None
    results = body(upload_run, "infer")["inference_results"]
    assert np.allclose([r["predicted_value"] for r in results], expected, atol=1e-6)


def test_list_stop_delete(upload_run: dict[str, Any]) -> None:
    assert MODEL_ID in value(upload_run, "list")
    assert value(upload_run, "stop") is None
    assert value(upload_run, "delete") is None
    assert value(upload_run, "delete_again") is None
    assert MODEL_ID not in value(upload_run, "list_after")


def test_import_hub_model_cli_traces_uploads_and_starts(
    eland_cluster: LocalCluster, eland_folders: list[Path], tmp_path: Path
) -> None:
    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model

    folder = build_tiny_model("text_embedding", tmp_path / "hub")
    expected = reference_vectors(eland_cluster, "cli-ref", trace_hf_model(folder, "text_embedding"))
    done = subprocess.run(
        [sys.executable, "-m", "eland.cli.eland_import_hub_model", "--url", eland_cluster.url,
         "--hub-model-id", str(folder), "--task-type", "text_embedding", "--es-model-id", "cli-emb", "--start"],
        env=client_env(eland_folders, {"HF_HOME": str(tmp_path / "hf-home")}), check=False, capture_output=True, text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    status, result = infer(eland_cluster, "cli-emb", list(SAMPLE_TEXTS))
    assert status == 200, result
    got = [r["predicted_value"] for r in result["inference_results"]]
    assert np.allclose(got, expected, atol=1e-5)
