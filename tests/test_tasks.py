"""Every task (binary, multiclass, regression) as plain functions: schema, params checks,
metrics, the gate's direction, ONNX parity, served answers, reports and Evidently's figures."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlpipeline.config import Params, load_params, set_values
from mlpipeline.gate import decide
from mlpipeline.loans import GRADES, make_batch
from mlpipeline.preset import apply, preset_text, presets
from mlpipeline.schema import Schema, check_frame, coerce
from mlpipeline.tasks import FAMILIES, PredictMethodError, task_for
from mlpipeline.tasks.multiclass import roc_auc_ovr
from mlpipeline.train import fit
from tests.conftest import REPO

RULES = {"min_rows": 10, "max_unknown_category_share": 0.01, "max_out_of_range_share": 0.0}


def preset_params(name: str, root: Path = REPO, **sections: Any) -> Params:
    raw = yaml.safe_load(apply((REPO / "params.yaml").read_text(), preset_text(name)))
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return Params.model_validate({**raw, "root": root})


PARAMS = {"binary": load_params(REPO), "multiclass": preset_params("multiclass"),
          "regression": preset_params("regression")}


def batches(params: Params, n: int = 3, rows: int = 700) -> pd.DataFrame:
    frames = [make_batch(i, seed=3, start_date=dt.date(2026, 1, 5), batch_days=7, rows=rows,
                         outcome=params.source.outcome) for i in range(n)]
    return coerce(pd.concat(frames, ignore_index=True), params.schema)


def test_presets_replace_whole_sections_in_place_comments_kept() -> None:
    base = "# head\na:\n  x: 1   # kept\n\nb:\n  y: 2\n  z: 3\n\nc: 4\n"
    assert apply(base, "# preset\nb:\n  y: 5 # new\nd: 6\n") == (
        "# head\na:\n  x: 1   # kept\n\nb:\n  y: 5 # new\n\nc: 4\n\nd: 6\n")
    assert presets() == ["multiclass", "regression"]
    for name in presets():
        params = PARAMS[name]
        assert params.task.name == params.schema.task == name
        assert params.gate.compare_metric in params.task.lower_is_better  # log_loss, rmse


def test_binary_is_the_default_and_each_task_checks_its_classes() -> None:
    data = {"target": "y", "time_column": "t", "features": [{"name": "x", "type": "numeric"}]}
    assert Schema.model_validate(data).classes == [0, 1]
    assert Schema.model_validate(data).task == "binary"
    cases = [({"task": "multiclass", "classes": ["a", "b"]}, "three or more labels"),
             ({"task": "multiclass"}, "three or more labels"),
             ({"task": "binary", "classes": [0, 1, 2]}, "set schema.task: multiclass"),
             ({"task": "regression", "classes": [0, 1]}, "remove schema.classes"),
             ({"target_max": 9}, "target_min/target_max are for a numeric target"),
             ({"task": "multiclass", "classes": ["a", "b", "a"]}, "must be distinct"),
             ({"task": "ordinal"}, "'binary', 'multiclass' or 'regression'")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            Schema.model_validate({**data, **change})
    assert Schema.model_validate({**data, "task": "multiclass", "classes": [3, 1, 2]}).labels \
        == [3, 1, 2]


def write_params(tmp_path: Path, text: str) -> Path:
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path


def test_a_metric_or_model_the_task_lacks_fails_at_start_naming_the_valid_ones(
        tmp_path: Path) -> None:
    text = apply((REPO / "params.yaml").read_text(), preset_text("regression"))
    wrong_metric = text.replace("compare_metric: rmse", "compare_metric: roc_auc")
    with pytest.raises(SystemExit) as error:
        load_params(write_params(tmp_path, wrong_metric))
    assert ("gate.compare_metric: 'roc_auc' is not a metric of task regression; valid: rmse "
            "(lower is better), mae (lower is better), r2 (higher is better), mape (lower is "
            "better)") in str(error.value)
    with pytest.raises(SystemExit, match=r"gate.min_metrics.f1: 'f1' is not a metric"):
        load_params(write_params(tmp_path, text.replace("r2: 0.35", "f1: 0.5")))
    with pytest.raises(SystemExit, match=r"train\.model 'logistic_regression' is not a model "
                                         r"family of task regression: use one of random_forest"):
        load_params(write_params(tmp_path, set_values(text, {
            "train.model": "logistic_regression"})))
    # Without a compare_metric the task's default is used.
    assert load_params(write_params(tmp_path, text.replace(
        "compare_metric: rmse", "compare_metric: null"))).gate.compare_metric == "rmse"


def test_a_hyperparameter_the_estimator_does_not_take_is_named() -> None:
    params = PARAMS["regression"]
    train = params.train.model_copy(update={"model": "random_forest", "hyperparams": {
        "random_forest": {"n_estimators": 5, "class_weight": "balanced"}}})
    with pytest.raises(SystemExit, match=r"train.hyperparams.random_forest.class_weight: not "
                                         r"a parameter of RandomForestRegressor \(task "
                                         r"regression\); valid: bootstrap, ccp_alpha"):
        fit(batches(params, 1, 50), params.model_copy(update={"train": train}))


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_a_booster_value_or_key_it_does_not_take_is_named_by_the_library(name: str) -> None:
    task = PARAMS[name].task
    cls = "XGBRegressor" if name == "regression" else "XGBLabelledClassifier"
    problems = task.hyperparam_problems({
        "xgboost": {"max_depth": -2, "n_estimators": 20, "etaa": 0.1},
        "lightgbm": {"num_leaves": 1, "subsample": 0.5}})
    assert problems == [
        "train.hyperparams.xgboost.max_depth: value -2 for Parameter max_depth should be "
        "greater equal to 0 max_depth: Maximum depth of the tree; 0 indicates no limit; a "
        "limit is required for depthwise policy",
        f"train.hyperparams.xgboost.etaa: not a parameter of {cls} (task {name}); valid: "
        + problems[1].split("valid: ")[1],
        "train.hyperparams.lightgbm.num_leaves: Check failed: (num_leaves) > (1)"]
    assert "learning_rate, max_bin" in problems[1]
    assert task.hyperparam_problems(PARAMS[name].train.hyperparams) == []  # the shipped ones


def as_delivered(frame: pd.DataFrame) -> pd.DataFrame:
    """A batch as ingest hands it over: every value a string or missing."""
    return frame.astype(str).where(frame.notna(), None)


def test_a_numeric_target_is_checked_like_a_feature() -> None:
    schema = PARAMS["regression"].schema
    raw = as_delivered(make_batch(0, seed=1, start_date=dt.date(2026, 1, 5), batch_days=7,
                                  rows=200, outcome="loss_amount"))
    assert all(c.passed for c in check_frame(raw, schema, **RULES))
    raw.loc[3, "loss_amount"], raw.loc[4, "loss_amount"] = "lots", None
    raw.loc[[5, 6], "loss_amount"] = "-12.5"
    failed = {(c.column, c.rule, c.failed_rows) for c in check_frame(raw, schema, **RULES)
              if not c.passed}
    assert failed == {("loss_amount", "type numeric", 1), ("loss_amount", "not null", 1),
                      ("loss_amount", "range [0.0, 1000000.0]", 2)}
    assert coerce(raw, schema)["loss_amount"].dtype == np.float64


def test_multiclass_labels_outside_the_classes_are_refused() -> None:
    schema = PARAMS["multiclass"].schema
    raw = as_delivered(make_batch(0, seed=1, start_date=dt.date(2026, 1, 5), batch_days=7,
                                  rows=200, outcome="risk_grade"))
    raw.loc[[1, 2], "risk_grade"] = "E"
    [bad] = [c for c in check_frame(raw, schema, **RULES) if not c.passed]
    assert (bad.rule, bad.failed_rows) == ("label in ['A', 'B', 'C', 'D']", 2)


def test_the_loan_stream_carries_one_outcome_on_the_same_applications() -> None:
    kwargs = {"seed": 7, "start_date": dt.date(2026, 1, 5), "batch_days": 7, "rows": 3000}
    default, loss, grade = (make_batch(2, outcome=o, **kwargs)
                            for o in ("default", "loss_amount", "risk_grade"))
    features = [c for c in default.columns if c != "default"]
    pd.testing.assert_frame_equal(default[features], loss[features])
    pd.testing.assert_frame_equal(default[features], grade[features])
    assert loss["loss_amount"].min() > 0 and set(grade["risk_grade"]) == set(GRADES)
    drifted = make_batch(2, outcome="loss_amount", covariate=1.0, concept=1.0, **kwargs)
    assert drifted["loss_amount"].mean() > 2 * loss["loss_amount"].mean()


def test_regression_metrics_on_known_values() -> None:
    task = PARAMS["regression"].task
    figures = task.metrics(pd.Series([0.0, 100.0, 200.0, 400.0]),
                           np.array([10.0, 110.0, 180.0, 400.0]))
    assert figures["rmse"] == pytest.approx(np.sqrt(150), abs=1e-6)
    assert figures["mae"] == 10.0
    assert figures["mape"] == pytest.approx((0.1 + 0.1 + 0) / 3, abs=1e-6)  # 0 is skipped ...
    assert figures["mape_zero_targets"] == 1  # ... and counted
    assert figures["r2"] == pytest.approx(1 - 600 / 87500, abs=1e-6)
    assert set(task.key_metrics) == {"rmse", "mae", "r2", "mape"}
    assert task.lower_is_better == {"rmse", "mae", "mape"}


def test_binary_metrics_on_known_values() -> None:
    """Accuracy beside the others (a binary task reported none), at the threshold."""
    task = PARAMS["binary"].task
    figures = task.metrics(pd.Series([0, 0, 1, 1, 1]), np.array(
        [[.9, .1], [.4, .6], [.3, .7], [.6, .4], [.2, .8]]))
    assert figures["accuracy"] == pytest.approx(3 / 5, abs=1e-6)  # at 0.5: 0 1 1 0 1
    assert (figures["precision"], figures["recall"]) == (pytest.approx(2 / 3, abs=1e-6),
                                                         pytest.approx(2 / 3, abs=1e-6))
    assert "accuracy" not in task.lower_is_better


def test_multiclass_metrics_on_known_values() -> None:
    from sklearn.metrics import roc_auc_score

    task = PARAMS["multiclass"].task
    actual = pd.Series(["A", "B", "C", "D", "D", "A"])
    scores = np.array([[.7, .1, .1, .1], [.1, .6, .2, .1], [.1, .2, .6, .1],
                       [.1, .1, .2, .6], [.6, .1, .1, .2], [.4, .3, .2, .1]])
    figures = task.metrics(actual, scores)
    assert figures["accuracy"] == pytest.approx(5 / 6, abs=1e-6)
    assert (figures["recall_D"], figures["precision_A"], figures["precision_D"]) == (
        0.5, pytest.approx(2 / 3, abs=1e-6), 1.0)
    index = task.class_index(actual)
    assert figures["roc_auc_ovr"] == pytest.approx(
        roc_auc_score(index, scores, multi_class="ovr", average="macro"), abs=1e-6)
    assert {"f1_macro", "f1_weighted", "log_loss", "recall_A"} <= set(figures)
    assert task.lower_is_better == {"log_loss"}
    # A class absent from the outcomes has no AUC of its own; the others are averaged.
    separated = np.array([[.9, .1, 0, 0], [.8, .2, 0, 0], [.1, .9, 0, 0], [.2, .8, 0, 0]])
    assert roc_auc_ovr(np.array([0, 0, 1, 1]), separated) == 1.0
    assert np.isnan(roc_auc_ovr(np.array([2, 2, 2, 2]), separated))


@pytest.mark.parametrize("name, metric, base", [("regression", "rmse", 100.0),
                                                ("multiclass", "log_loss", 0.5)])
def test_a_worse_challenger_on_a_lower_is_better_metric_is_rejected(
        name: str, metric: str, base: float) -> None:
    params = PARAMS[name]
    better, worse = base * 1.04, base * 1.06
    gate = params.gate.model_copy(update={"min_metrics": {metric: base * 1.2},
                                          "compare_metric": metric, "tolerance": base * 0.05})
    champion = {metric: base}

    def verdict(value: float) -> Any:
        return decide({metric: value}, champion, gate, champion_version="1",
                      lower_is_better=params.task.lower_is_better)

    assert verdict(better).promote  # up to the tolerance above the champion
    rejected = verdict(worse)
    assert not rejected.promote and f"{metric} vs champion v1" in rejected.reason
    assert rejected.checks[0].name == f"{metric} <= floor"  # a ceiling
    assert not verdict(base * 1.3).promote  # over the ceiling


@functools.cache  # each task's model is trained once for the tests that read it
def trained(name: str, model: str) -> tuple[Params, Any, pd.DataFrame]:
    params = PARAMS[name]
    data = batches(params)
    train = params.train.model_copy(update={"model": model})
    pipeline, _ = fit(data.iloc[:1400], params.model_copy(update={"train": train}))
    return params, pipeline, data.iloc[1400:]


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("model", ["random_forest", "linear", "xgboost", "lightgbm"])
def test_the_onnx_twin_is_verified_by_the_task_parity_rule(name: str, model: str) -> None:
    from mlpipeline.onnx_export import export, onnx_feed, session

    params, pipeline, test = trained(name, model)
    task = params.task
    onnx_bytes, figures = export(pipeline, task, test)
    assert figures["onnx"] == "verified", figures.get("onnx_reason")
    assert figures["onnx_checked_rows"] == len(test)
    columns = {c: test[c].astype(object).where(test[c].notna(), None).tolist()
               for c in params.schema.feature_names}
    twin = task.scorer(pipeline, session(onnx_bytes))(columns)
    reference = task.scores(pipeline, test[params.schema.feature_names])
    if name == "regression":
        tolerance = figures["onnx_tolerance"]
        assert tolerance == pytest.approx(1e-5 * test["loss_amount"].std(ddof=0), rel=1e-6)
        assert np.max(np.abs(twin - reference)) <= tolerance
    else:  # every class probability, and no decision changed
        assert np.max(np.abs(twin - reference)) <= 1e-6
        assert (task.predictions(twin) == task.predictions(reference)).all()
    assert onnx_feed(columns, params.schema).keys() == set(params.schema.feature_names)


def test_the_parity_rules_refuse_a_twin_that_differs() -> None:
    multiclass, regression = PARAMS["multiclass"].task, PARAMS["regression"].task
    reference = np.array([[0.5, 0.3, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1]])
    nudged = reference + np.array([[0, 2e-6, 0, -2e-6], [0, 0, 0, 0]])
    _, problem = multiclass.onnx_parity(nudged,
                                        reference, pd.Series(["A", "B"]))
    assert problem and "max |dp| 2.00e-06" in problem
    flipped = reference[:, [1, 0, 2, 3]]
    figures, problem = multiclass.onnx_parity(flipped, reference, pd.Series(["A", "B"]))
    assert figures["onnx_label_flips"] == 2 and "2 labels changed" in problem
    actual = pd.Series([100.0, 300.0])  # standard deviation 100: tolerance 1e-3
    assert regression.onnx_parity(np.array([1.0, 2.0009]), np.array([1.0, 2.0]), actual)[1] \
        is None
    assert "of the target's standard deviation" in regression.onnx_parity(
        np.array([1.0, 2.002]), np.array([1.0, 2.0]), actual)[1]


def test_served_answers_have_the_task_shape_and_predict_proba_the_model_column_order() -> None:
    params = PARAMS["multiclass"]
    # The schema's class order is not scikit-learn's (sorted): answers follow the schema,
    # predict_proba the model, as `mlflow models serve` answers it.
    schema = params.schema.model_copy(update={"classes": ["D", "A", "C", "B"]})
    params = params.model_copy(update={"schema_": schema})
    data = batches(params, 2, 500)
    pipeline, _ = fit(data, params)
    task = params.task
    features = data[schema.feature_names].head(5)
    scores = task.scores(pipeline, features)
    np.testing.assert_allclose(task.proba_rows(scores, pipeline),
                               pipeline.predict_proba(features).round(6))
    answers = task.answers(scores)
    assert answers.predictions == pipeline.predict(features).tolist()
    [first, *_] = answers.records()
    assert list(first["probabilities"]) == ["D", "A", "C", "B"]
    assert first["label"] == max(first["probabilities"], key=first["probabilities"].get)
    assert np.stack(answers.log["probabilities"]).shape == (5, 4)
    pd.testing.assert_frame_equal(
        pd.DataFrame(task.scores_from_log(pd.DataFrame(answers.log))), pd.DataFrame(
            scores.round(6)))

    regression = PARAMS["regression"].task
    values = regression.answers(np.array([12.3456789, 99.0]))
    assert values.records() == [{"value": 12.345679}, {"value": 99.0}]
    assert values.log == {"prediction": [12.345679, 99.0]}
    with pytest.raises(PredictMethodError, match="predicts values"):
        regression.proba_rows(np.array([1.0]), None)

    binary = PARAMS["binary"].task  # threshold 0.5 on the positive class, the schema's last
    answer = binary.answers(np.array([[0.3, 0.7], [0.6, 0.4]]))
    assert answer.records() == [{"label": 1, "probability": 0.7},
                                {"label": 0, "probability": 0.4}]


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_one_record_is_answered_as_it_is_within_a_batch(name: str) -> None:
    # One record takes a path without array operations; its answer must be the batch path's,
    # bit for bit: at a threshold whose float32 is below it (0.7), on ties between classes,
    # on values that are not finite or too large to round as a scaled integer.
    task = PARAMS[name].task
    if name == "binary":
        task = type(task)(task.schema, threshold=0.7)
    rng = np.random.default_rng(7)
    edges = [0.7, float(np.float32(0.7)), np.nextafter(np.float32(0.7), 1), 0.0, 1.0,
             0.1234565, 0.5, np.nan]
    if name == "regression":
        values = [*rng.normal(5e3, 1e4, 500), *edges, 999_999_999.5, 1e9, -1e12, 1e300, np.inf]
        with np.errstate(over="ignore"):  # 1e300 as float32: inf, as meant
            batches_of_scores = [np.asarray(values, dtype=np.float64),
                                 np.asarray(values, dtype=np.float32)]
    else:
        classes = len(task.classes)
        random = rng.dirichlet(np.ones(classes), 500)
        ties = np.full((3, classes), 1 / classes)
        edge = np.array([[1 - p, *[p / (classes - 1)] * (classes - 1)] for p in edges])
        if name == "binary":
            edge = np.array([[1 - p, p] for p in edges])
        rows = np.concatenate([random, ties, edge])
        batches_of_scores = [rows.astype(np.float32), rows.astype(np.float64)]
    for scores in batches_of_scores:
        together = task.answers(scores)
        for i in range(len(scores)):
            alone = task.answers(scores[i:i + 1])
            for column, values in together.log.items():
                assert str(alone.log[column]) == str([values[i]]), (name, scores.dtype, i)


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_evaluate_writes_the_task_metrics_tables_and_plot_definitions(
        name: str, tmp_path: Path) -> None:
    from mlpipeline.evaluate import evaluate, write_reports

    params, pipeline, test = trained(name, "random_forest")
    params = params.model_copy(update={"root": tmp_path})
    metrics, predictions, tables = evaluate(pipeline, test, params)
    assert set(params.task.key_metrics) <= set(metrics) and metrics["rows"] == len(test)
    assert list(predictions.columns[:3]) == ["application_date", "actual", "predicted"]
    write_reports(params, metrics, predictions, tables)
    spec = yaml.safe_load((tmp_path / "reports/dvc.yaml").read_text())
    for plot in spec["plots"]:
        [(title, definition)] = plot.items()
        for path, column in definition["y"].items():
            table = pd.read_csv(tmp_path / "reports" / path)
            assert {definition["x"], column} <= set(table.columns), title
    figures = params.task.figures(tables, predictions)
    assert figures and all(key.startswith("plots/") for key in figures)
    if name == "multiclass":
        assert set(predictions["actual"]) <= set(GRADES)  # the class names
    if name == "regression":
        assert params.task.value_buckets(test["loss_amount"]) == sorted(
            params.task.value_buckets(test["loss_amount"]))


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_evidently_computes_the_same_performance_and_tests_the_floors(name: str) -> None:
    params, pipeline, test = trained(name, "random_forest")
    task = params.task
    actual = test[params.schema.target].reset_index(drop=True)
    scores = task.scores(pipeline, test[params.schema.feature_names])
    ours = task.metrics(actual, scores)
    snapshot = task.evidently_performance(actual, scores, params.gate.min_metrics).dict()
    by_id = {metric_id.split(":")[-1]: name for name, metric_id in
             task.evidently_metric_ids.items()}
    found = {}
    for metric in snapshot["metrics"]:
        value = metric["value"]
        found[by_id[metric["metric_name"].split("(")[0]]] = (
            value["mean"] if isinstance(value, dict) else value)
    if name == "regression":
        found["mape"] /= 100  # Evidently's percent
    assert found.keys() == task.evidently_metric_ids.keys()
    for metric, value in found.items():
        assert value == pytest.approx(ours[metric], abs=1e-5), metric
    floors = [floor for floor in params.gate.min_metrics if floor in found]
    assert len(snapshot["tests"]) == len(floors)


def test_every_task_offers_every_family() -> None:
    for params in PARAMS.values():
        assert set(FAMILIES) <= set(params.task.estimators)
    assert task_for(PARAMS["binary"].schema, 0.3).threshold == 0.3


def test_a_typo_in_params_is_one_line_naming_the_key_and_the_fix(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text().replace("  max_records: 1000",
                                                      "  max_recrods: 1000")
    with pytest.raises(SystemExit) as error:
        load_params(write_params(tmp_path, text.replace("  task: binary", "  task: binray")))
    lines = str(error.value).splitlines()
    assert lines[0] == "params.yaml is not valid (2 problem(s)):"
    assert lines[1].startswith("  - serving.max_recrods: not a setting of serving: did you "
                               "mean max_records? (valid: host, port,")
    assert lines[2] == ("  - schema.task: Input should be 'binary', 'multiclass' or "
                        "'regression'")


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_slices_compare_both_models_by_the_task_metric(name: str) -> None:
    """register's slice comparison on real models of each task: the gate's compare metric
    in its direction (f1_macro up, rmse down), a bin of a number and each category."""
    from mlpipeline.gate import decide
    from mlpipeline.register import slice_comparison

    params, forest, test = trained(name, "random_forest")
    _, dummy, _ = trained(name, "dummy")
    gate = params.gate.model_copy(update={"slices": ["region", "credit_score"],
                                          "slice_min_rows": 50, "slice_tolerance": 0.0})
    params = params.model_copy(update={"gate": gate})

    def scores(model: object) -> np.ndarray:
        return params.task.scores(model, test[params.schema.feature_names])

    same = slice_comparison(params, test, scores(forest), scores(forest))
    compared = [s for s in same if s.passed is not None]
    assert compared and all(s.passed and s.challenger == s.champion for s in compared)
    assert {s.feature for s in compared} == {"region", "credit_score"}
    worse = slice_comparison(params, test, scores(dummy), scores(forest))  # baseline vs forest
    failed = [s for s in worse if s.passed is False]
    assert failed, [(s.name, s.challenger, s.champion, s.note) for s in worse]
    lower = gate.compare_metric in params.task.lower_is_better
    assert all((s.challenger > s.champion) if lower else (s.challenger < s.champion)
               for s in failed)
    metrics = {m: 1.0 for m in params.task.metric_directions}
    verdict = decide(metrics, metrics, gate, lower_is_better=params.task.lower_is_better,
                     champion_version="1", slices=worse)
    assert not verdict.promote and f"{gate.compare_metric} on {failed[0].name}:" in \
        verdict.reason
