"""pass_through: the raw model output for the text, as a 2-D array."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.tasks.base import BaseTask, Prepared


def pass_through_result(
    output: np.ndarray, row_lengths: Sequence[int], results_field: str, truncated: bool
) -> dict[str, Any]:
    """ES returns ``inference[0]``: the first row's [seq, dim] (padding cut off), or for 1-D rows all rows."""
    if output.ndim >= 3:
        first = output[0][: row_lengths[0]]
        matrix = first.reshape(first.shape[0], -1)
    elif output.ndim == 2:
        matrix = output
    else:
        matrix = output.reshape(-1, 1)
    result: dict[str, Any] = {results_field: np.asarray(matrix, dtype=np.float64).tolist()}
    if truncated:
        result["is_truncated"] = True
    return result


class PassThroughTask(BaseTask):
    name = "pass_through"

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> dict[str, Any]:
        return pass_through_result(
            output,
            [len(row) for row in prepared.rows],
            prepared.config["results_field"],
            prepared.tokenization.truncated,
        )
