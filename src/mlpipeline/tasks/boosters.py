"""XGBoost and LightGBM as model families (`train.model: xgboost | lightgbm`), on the same
footing as scikit-learn's: a task's estimator, hyper-parameters checked at load, an ONNX twin.

Both libraries take scikit-learn's estimator API, so the pipeline (imputer, one-hot encoder,
estimator), the stages, the service and the Spark engine need nothing of their own. Three
things differ and live here:
- XGBoost's classifier learns classes 0..n-1 only; `XGBLabelledClassifier` takes the schema's
  labels and answers them, as scikit-learn's classifiers do (`classes_`).
- Their parameters carry no scikit-learn constraints: a value is checked by fitting a few
  rows with it, and the library's own message names what is wrong.
- Their ONNX converters come from onnxmltools, registered with skl2onnx so that the whole
  pipeline converts in one piece (`register_onnx_converters`).
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any

import numpy as np
from xgboost import XGBClassifier

# What a booster is fitted with unless train.hyperparams says otherwise: quiet, and the same
# model bits whatever the thread count (LightGBM's row-wise histograms in a fixed order).
DEFAULTS: dict[str, dict[str, Any]] = {
    "xgboost": {"verbosity": 0, "tree_method": "hist"},
    "lightgbm": {"verbose": -1, "deterministic": True, "force_row_wise": True},
}
# The ONNX operator set of the tree ensembles that onnxmltools writes (ai.onnx.ml 3).
ONNX_OPSET = {"": 18, "ai.onnx.ml": 3}


class XGBLabelledClassifier(XGBClassifier):
    """XGBClassifier on the schema's labels: XGBoost learns classes 0..n-1 only, so the labels
    are encoded in `fit` (sorted, as scikit-learn sorts `classes_`) and answered by
    `predict`; `predict_proba`'s columns follow `classes_`."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> XGBLabelledClassifier:
        self.__dict__.pop("labels_", None)  # a refit learns its labels again
        labels, codes = np.unique(np.asarray(y), return_inverse=True)
        super().fit(X, codes, **kwargs)
        self.labels_ = labels
        return self

    @property
    def classes_(self) -> np.ndarray:
        labels = self.__dict__.get("labels_")
        return labels if labels is not None else np.arange(self.n_classes_)

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        return self.classes_[np.asarray(super().predict(X, **kwargs), dtype=int)]


def value_problem(cls: type, key: str, value: Any, classifier: bool) -> str | None:
    """The library's own message when `cls(key=value)` cannot fit, else None: boosters
    check their values when they fit, so a few rows are fitted (milliseconds)."""
    rows = np.random.default_rng(0).random((40, 3))
    target = np.arange(40) % 2 if classifier else rows[:, 0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(**{**DEFAULTS[family_of(cls)], key: value}).fit(rows, target)
    except Exception as error:  # each library raises its own error types
        lines = str(error).strip().splitlines() or [type(error).__name__]
        text = " ".join(line.strip() for line in lines[:3])
        return re.sub(r" at /\S+, line \d+ ?\.?", "", text)[:300]  # LightGBM's source line
    return None


def family_of(cls: type) -> str:
    return "xgboost" if cls.__module__.startswith(("xgboost", __name__)) else "lightgbm"


@functools.cache
def register_onnx_converters() -> None:
    """Teach skl2onnx the boosters' estimators with onnxmltools' converters (once)."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBRegressor

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    for cls, alias, shapes, convert, options in [
        (XGBLabelledClassifier, "XGBLabelledClassifier",
         calculate_linear_classifier_output_shapes, convert_xgboost, classifier_options),
        (XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
         convert_xgboost, None),
        (LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
         convert_lightgbm, classifier_options),
        (LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
         convert_lightgbm, {"split": None}),
    ]:
        update_registered_converter(cls, alias, shapes, convert, options=options)
