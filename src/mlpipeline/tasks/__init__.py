"""Any tabular task by configuration: `schema.task` is binary, multiclass or regression.

One module per task owns what depends on it: the estimators of each model family, the
metrics and their directions, the gate's default metric, the plots (DVC's and MLflow's), the
ONNX parity rule, the served answer's shape and the performance check on outcomes. The
stages, the service and monitoring hold a `Task` (from `task_for`) and ask it.
"""

from __future__ import annotations

from mlpipeline.schema import Schema
from mlpipeline.tasks.base import FAMILIES, Answers, PredictMethodError, Task
from mlpipeline.tasks.binary import Binary
from mlpipeline.tasks.multiclass import Multiclass
from mlpipeline.tasks.regression import Regression

TASKS: dict[str, type[Task]] = {"binary": Binary, "multiclass": Multiclass,
                                "regression": Regression}


def task_for(schema: Schema, threshold: float = 0.5) -> Task:
    """The task of a schema; `threshold` is a binary task's decision threshold."""
    return TASKS[schema.task](schema, threshold)


__all__ = ["FAMILIES", "TASKS", "Answers", "PredictMethodError", "Task", "task_for"]
