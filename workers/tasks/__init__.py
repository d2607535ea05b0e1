"""The NLP tasks a worker serves, one module per task, and ``build_task`` (the registry).

The worker runtime calls ``build_task(inference_config, vocabulary)`` once per deployment, then
``task.prepare(text, effective_config)`` per doc (``effective_config`` comes from
``shared.task_config.resolve_request_config``) and ``task.run(module, prepared_docs)`` per batch:
one padded forward pass over every row of every doc, then per-doc post-processing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import IllegalArgument
from shared.task_config import task_body, task_type
from workers.tasks.base import BaseTask, Prepared, Task
from workers.tasks.fill_mask import FillMaskTask
from workers.tasks.ner import NerTask
from workers.tasks.pass_through import PassThroughTask
from workers.tasks.question_answering import QuestionAnsweringTask
from workers.tasks.text_classification import TextClassificationTask
from workers.tasks.text_embedding import TextEmbeddingTask
from workers.tasks.text_expansion import TextExpansionTask
from workers.tasks.text_similarity import TextSimilarityTask
from workers.tasks.zero_shot_classification import ZeroShotClassificationTask
from workers.tokenization import NlpTokenizer, build_tokenizer

TaskFactory = Callable[[Mapping[str, Any], NlpTokenizer], BaseTask]

TASKS: dict[str, TaskFactory] = {
    "ner": NerTask,
    "text_classification": TextClassificationTask,
    "zero_shot_classification": ZeroShotClassificationTask,
    "fill_mask": FillMaskTask,
    "question_answering": QuestionAnsweringTask,
    "text_similarity": TextSimilarityTask,
    "text_embedding": TextEmbeddingTask,
    "text_expansion": TextExpansionTask,
    "pass_through": PassThroughTask,
}


def build_task(inference_config: Mapping[str, Any], vocabulary: Mapping[str, Any]) -> Task:
    """The task for a model's normalized ``inference_config`` and its uploaded vocabulary document."""
    name = task_type(inference_config)
    factory = TASKS.get(name)
    if factory is None:
        raise IllegalArgument(f"unsupported task type [{name}]")
    tokenization = task_body(inference_config).get("tokenization") or {"bert": {}}
    tokenizer = build_tokenizer(vocabulary, tokenization)
    return factory(inference_config, tokenizer)


__all__ = ["TASKS", "BaseTask", "Prepared", "Task", "build_task"]
