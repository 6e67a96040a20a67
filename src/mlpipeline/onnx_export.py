"""An ONNX twin of a fitted pipeline, shipped only when it predicts what the pipeline predicts.

ONNX Runtime scores one record in well under a millisecond where scikit-learn's per-call
overhead costs several; the service uses the twin when the logged model carries one. The
twin is checked against scikit-learn on the whole test split before it is shipped, by the
task's parity rule: for classification any class probability off by more than 1e-6, or any
changed label; for regression any value off by more than a small share of the
target's spread. Otherwise no twin is shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mlpipeline.schema import Schema


class TwinRules(Protocol):
    """What `export` needs from a task (mlpipeline.tasks.Task, which uses this module's
    feed): how to convert, read the twin's outputs, score with scikit-learn and compare."""

    schema: Schema

    def onnx_options(self, model: Any) -> dict[int, dict[str, Any]]: ...
    def onnx_scores(self, outputs: list[np.ndarray], model: Any) -> np.ndarray: ...
    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray: ...
    def onnx_parity(self, twin: np.ndarray, reference: np.ndarray, actual: pd.Series
                    ) -> tuple[dict[str, Any], str | None]: ...

FILE_NAME = "model.onnx"
ERROR_FILE = "onnx/conversion_error.txt"  # run artefact with the converter's whole message
REASON_CHARS = 200  # of the message's first line, in the `onnx_reason` tag
# Estimators converted by onnxmltools' converters (mlpipeline.tasks.boosters registers them).
BOOSTER_MODULES = ("xgboost", "lightgbm", "mlpipeline.tasks.boosters")


def onnx_inputs(records: list[dict[str, Any]], schema: Schema) -> dict[str, np.ndarray]:
    """Feed for the ONNX graph from records (dicts by feature name)."""
    return onnx_feed({name: [r[name] for r in records] for name in schema.feature_names},
                     schema)


def onnx_feed(columns: dict[str, Any], schema: Schema) -> dict[str, np.ndarray]:
    """Feed for the ONNX graph: one (n, 1) tensor per feature; missing numbers (None) are
    NaN, missing categories the empty string (unknown to the encoder: all zeros, as in
    sklearn)."""
    return onnx_feeder(schema)(columns)


def onnx_feeder(schema: Schema) -> Callable[[dict[str, Any]], dict[str, np.ndarray]]:
    """`onnx_feed` for one schema, its column lists taken once (the service's request path)."""
    numeric, categorical = schema.numeric, schema.categorical

    def feed(columns: dict[str, Any]) -> dict[str, np.ndarray]:
        tensors = {}
        for name in numeric:
            tensors[name] = np.array(columns[name], dtype=np.float32)[:, None]  # None: NaN
        for name in categorical:
            tensors[name] = np.array(["" if v is None else str(v) for v in columns[name]],
                                     dtype=object)[:, None]
        return tensors

    return feed


def frame_records(frame: pd.DataFrame, schema: Schema) -> list[dict[str, Any]]:
    subset = frame[schema.feature_names].astype(object)
    return subset.where(subset.notna(), None).to_dict(orient="records")


def session(onnx_bytes: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One record at a time gains nothing from threads; requests are concurrent instead.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_bytes, options,
                                        providers=["CPUExecutionProvider"])


def export(model: Any, task: TwinRules, check_rows: pd.DataFrame
           ) -> tuple[bytes | None, dict[str, Any]]:
    """(ONNX bytes or None, the parity figures and the reason when there is no twin)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    schema = task.schema
    inputs = [(n, FloatTensorType([None, 1])) for n in schema.numeric]
    inputs += [(n, StringTensorType([None, 1])) for n in schema.categorical]
    opset: int | dict[str, int] = 18
    if type(model.steps[-1][1]).__module__.startswith(BOOSTER_MODULES):
        from mlpipeline.tasks.boosters import ONNX_OPSET, register_onnx_converters

        register_onnx_converters()
        opset = ONNX_OPSET
    try:
        graph = to_onnx(model, initial_types=inputs, target_opset=opset,
                        options=task.onnx_options(model))
        onnx_bytes = graph.SerializeToString()
        sess = session(onnx_bytes)
        twin = task.onnx_scores(
            sess.run(None, onnx_inputs(frame_records(check_rows, schema), schema)), model)
    except Exception as error:  # no converter for this model type, or the runtime refuses it
        # The tag gets one short line; converters can put megabytes of arrays in the message,
        # so the whole text goes to a run artefact (ERROR_FILE).
        first = (str(error).strip().splitlines() or [""])[0][:REASON_CHARS]
        return None, {"onnx": "unavailable", "onnx_reason": f"{type(error).__name__}: {first}",
                      "onnx_error_text": f"{type(error).__name__}: {error}"}
    reference = task.scores(model, check_rows[schema.feature_names])
    figures, problem = task.onnx_parity(twin, reference, check_rows[schema.target])
    figures["onnx_checked_rows"] = len(reference)
    if problem:
        return None, {**figures, "onnx": "rejected", "onnx_reason": problem}
    return onnx_bytes, {**figures, "onnx": "verified"}
