from __future__ import annotations

from tests.integration.conftest import tiny_embedding_model

__all__ = ["tiny_embedding_model"]
