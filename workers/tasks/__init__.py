"""The NLP tasks a worker serves, one module per task, and ``build_task`` (the registry).

The worker runtime calls ``build_task(inference_config, vocabulary)`` once per deployment, then
``task.prepare(text, effective_config)`` per doc and ``task.run(module, prepared_docs)`` per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import IllegalArgument
from shared.task_config import task_body, task_type
from workers.tasks.base import BaseTask, Prepared, Task
from workers.tasks.text_embedding import TextEmbeddingTask
from workers.tokenization import NlpTokenizer, build_tokenizer

TaskFactory = Callable[[Mapping[str, Any], NlpTokenizer], BaseTask]

TASKS: dict[str, TaskFactory] = {
    "text_embedding": TextEmbeddingTask,
}


def build_task(inference_config: Mapping[str, Any], vocabulary: Mapping[str, Any]) -> Task:
    """The task for a model's normalized ``inference_config`` and its uploaded vocabulary."""
    name = task_type(inference_config)
    factory = TASKS.get(name)
    if factory is None:
        raise IllegalArgument(f"unsupported task type [{name}]")
    tokenization = task_body(inference_config).get("tokenization") or {"bert": {}}
    tokenizer = build_tokenizer(vocabulary, tokenization)
    return factory(inference_config, tokenizer)


__all__ = ["TASKS", "Prepared", "Task", "build_task"]
