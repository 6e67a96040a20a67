"""Stage `tune`: a seeded search of train.model's hyper-parameters, each trial tracked.

Each trial fits the training pipeline on the older rows of the train split and is scored on
its newest `tune.validation_fraction`, by time, as the gate later scores on the test split:
the test split is never read here. Optuna's TPE sampler, seeded by `tune.seed`, draws the
trials one after another (each fit uses every core as train.hyperparams says): the same data
and params give the same trials, the same best point and so the same model.

Every trial is a nested MLflow run under one parent run (its params, validation metric and
seconds; a trial that raises is a FAILED run with its error, and the search goes on). The
parent holds the best point and the study's history as a plot. reports/tune.json holds what
train fits (no timings: it is a DVC output); the seconds go to MLflow and
models/tune_timing.json. With `tune.trials: 0` the stage only says so, and train fits
train.hyperparams as written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from mlpipeline.config import TUNE_REPORT, TUNE_TIMING, Params, SearchRange, load_params
from mlpipeline.lineage import file_md5
from mlpipeline.schema import training_target

TrialRecord = dict[str, Any]
TIMES = ("seconds", "started_at", "ended_at")  # a trial's, for MLflow only


def search_metric(params: Params) -> tuple[str, bool]:
    """The metric the search optimises (tune.metric, else the gate's) and whether lower is
    better."""
    metric = params.tune.metric or str(params.gate.compare_metric)
    return metric, params.task.metric_directions[metric]


def validation_split(frame: pd.DataFrame, time_column: str, fraction: float
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(older rows to fit on, the newest `fraction` of the rows by time to score on)."""
    ordered = frame.sort_values(time_column, kind="stable")
    held = min(len(ordered) - 1, max(1, round(len(ordered) * fraction)))
    return ordered.iloc[:-held], ordered.iloc[-held:]


def suggest(trial: Any, space: dict[str, SearchRange]) -> dict[str, Any]:
    """One trial's point of the space (Optuna draws it)."""
    point: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.choices is not None:
            point[key] = trial.suggest_categorical(key, spec.choices)
            continue
        low, high = spec.low, spec.high
        assert low is not None and high is not None  # SearchRange: choices, or both ends
        if spec.integer:
            point[key] = trial.suggest_int(key, int(low), int(high), log=spec.log)
        else:
            point[key] = trial.suggest_float(key, float(low), float(high), log=spec.log)
    return point


def search(frame: pd.DataFrame, params: Params,
           on_trial: Callable[[TrialRecord], None] | None = None,
           timeout: float | None = None) -> dict[str, Any]:
    """The search on `frame` (the rows train would fit): what reports/tune.json holds.
    `on_trial` sees each trial's record as it ends (the MLflow runs). `timeout` (seconds)
    stops it early: for benchmarks at a wall-clock budget; the stage runs all its trials, so
    its answer does not depend on the machine's speed."""
    import optuna

    from mlpipeline.train import build_pipeline

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the stage says what happened
    schema, task, train, tune = params.schema, params.task, params.train, params.tune
    space = tune.space.get(train.model)
    if not space:
        raise SystemExit(f"tune: tune.space has no range for train.model {train.model!r}: add "
                         f"one (params.yaml, tune.space.{train.model}) or set tune.trials: 0")
    metric, lower = search_metric(params)
    fit_rows, scored = validation_split(frame, schema.time_column, tune.validation_fraction)
    fit_target = training_target(fit_rows[schema.target], schema)
    shipped = train.chosen_hyperparams()
    history: list[TrialRecord] = []

    def objective(trial: Any) -> float:
        point = suggest(trial, space)
        record: TrialRecord = {"trial": trial.number, "params": point,
                               "started_at": time.time()}
        started = time.perf_counter()
        try:
            pipeline = build_pipeline(task, train.model, {**shipped, **point}, train.seed)
            pipeline.fit(fit_rows[schema.feature_names], fit_target)
            value = task.metrics(scored[schema.target],
                                 task.scores(pipeline, scored[schema.feature_names]))[metric]
            if pd.isna(value):
                raise ValueError(f"{metric} is not a number on the validation rows")
        except Exception as error:  # recorded, and the search goes on (Optuna: FAIL)
            record.update(state="FAIL", error=f"{type(error).__name__}: {error}"[:500])
            raise
        else:
            record.update(state="COMPLETE", value=float(value))
            return float(value)
        finally:
            record["seconds"] = round(time.perf_counter() - started, 3)
            record["ended_at"] = time.time()
            history.append(record)
            if on_trial is not None:
                on_trial(record)

    sampler = optuna.samplers.TPESampler(seed=tune.seed)
    study = optuna.create_study(direction="minimize" if lower else "maximize", sampler=sampler)
    study.optimize(objective, n_trials=tune.trials, timeout=timeout, catch=(Exception,))
    done = [r for r in history if r["state"] == "COMPLETE"]
    if not done:
        raise SystemExit(f"tune: all {len(history)} trials failed; the first: "
                         f"{history[0]['error']}")
    best = study.best_trial
    return {
        "model": train.model,
        "metric": metric,
        "direction": "lower is better" if lower else "higher is better",
        "trials": len(history),
        "completed": len(done),
        "failed": len(history) - len(done),
        "validation": {"rows": len(scored), "fit_rows": len(fit_rows),
                       "from": pd.Timestamp(scored[schema.time_column].min()).isoformat()},
        "best": {"trial": best.number, "value": float(best.values[0]), "searched": best.params,
                 "hyperparams": {**shipped, **best.params}},
        # No times here: the file is a DVC output, the same bytes every run.
        "history": [{k: v for k, v in r.items() if k not in TIMES} for r in history],
    }


def no_search(params: Params) -> dict[str, Any]:
    return {"model": params.train.model, "trials": 0,
            "note": "no search (tune.trials: 0): train fits train.hyperparams as written"}


def tuned_hyperparams(params: Params, report: dict[str, Any] | None) -> tuple[dict[str, Any],
                                                                             str]:
    """What train fits, and where it comes from (train_info, the run's tags, the card)."""
    if report and report.get("trials") and report.get("model") == params.train.model:
        best = report["best"]
        return dict(best["hyperparams"]), (
            f"tune: trial {best['trial']} of {report['trials']}, validation "
            f"{report['metric']} {best['value']:.4f} (reports/tune.json)")
    return params.train.chosen_hyperparams(), (
        f"params.yaml (train.hyperparams.{params.train.model})")


def history_figure(report: dict[str, Any]) -> Any:
    """Each trial's validation metric and the best so far."""
    from mlpipeline.tasks.base import new_figure

    lower = report["direction"].startswith("lower")
    fig, ax = new_figure()
    done = [(r["trial"], r["value"]) for r in report["history"] if r["state"] == "COMPLETE"]
    best, running = [], None
    for _, value in done:
        running = value if running is None else (min if lower else max)(running, value)
        best.append(running)
    ax.plot([t for t, _ in done], [v for _, v in done], "o", label="trial")
    ax.step([t for t, _ in done], best, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel=f"validation {report['metric']}",
           title=f"Search of {report['model']} ({report['trials']} trials)")
    ax.legend()
    return fig


def run(params: Params) -> dict[str, Any]:
    """The stage: the search with its MLflow runs, reports/tune.json, models/tune_timing.json."""
    report_path, timing_path = params.path(TUNE_REPORT), params.path(TUNE_TIMING)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    if params.tune.trials == 0:
        report = no_search(params)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        timing_path.unlink(missing_ok=True)
        print(f"tune: off (tune.trials: 0); train fits train.hyperparams.{params.train.model}")
        return report
    from mlpipeline.train import newest, training_rows  # scikit-learn: only for a search

    frame, available = training_rows(params)
    frame = newest(frame, params, available)
    started = time.perf_counter()
    report, run_id = tracked_search(frame, params)
    seconds = round(time.perf_counter() - started, 3)
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    timing_path.write_text(json.dumps({"tune_md5": file_md5(report_path), "seconds": seconds,
                                       "run_id": run_id, "finished_at": time.time()}) + "\n")
    record_seconds(params, run_id, seconds)
    best = report["best"]
    print(f"tune: {report['completed']} of {report['trials']} trials of {report['model']} in "
          f"{seconds} s ({report['failed']} failed); best trial {best['trial']}: validation "
          f"{report['metric']} {best['value']:.4f} on the newest {report['validation']['rows']}"
          f" train rows -> {TUNE_REPORT}")
    return report


def tracked_search(frame: pd.DataFrame, params: Params) -> tuple[dict[str, Any], str]:
    """The search under one parent MLflow run, each trial a nested run."""
    import matplotlib.pyplot as plt
    import mlflow

    from mlpipeline import tracking

    metric, _ = search_metric(params)
    with tracking.store(params):
        experiment = tracking.experiment_id(params)
    name = f"tune-{params.train.model}-{params.window.end}"
    with tracking.store(params), mlflow.start_run(experiment_id=experiment,
                                                  run_name=name) as parent:
        mlflow.set_tags({"run_kind": "tune", "model_type": params.train.model,
                         "task": params.task.name})
        mlflow.log_params({"tune.trials": params.tune.trials, "tune.seed": params.tune.seed,
                           "tune.metric": metric, "train.model": params.train.model,
                           "tune.validation_fraction": params.tune.validation_fraction})

        client = tracking.client(params)

        def log_trial(record: TrialRecord) -> None:
            # A nested run spanning the trial's own time (logged once it has ended).
            tags = {"mlflow.parentRunId": parent.info.run_id, "run_kind": "tune-trial",
                    "trial": str(record["trial"])}
            if record["state"] != "COMPLETE":
                print(f"tune: trial {record['trial']} failed: {record['error']}")
                tags["error"] = record["error"]
            child = client.create_run(experiment, start_time=int(record["started_at"] * 1000),
                                      tags=tags, run_name=f"trial-{record['trial']}")
            run_id = child.info.run_id
            for key, value in record["params"].items():
                client.log_param(run_id, key, value)
            client.log_metric(run_id, "seconds", record["seconds"])
            if record["state"] == "COMPLETE":
                client.log_metric(run_id, f"validation_{metric}", record["value"])
            client.set_terminated(run_id, "FINISHED" if record["state"] == "COMPLETE"
                                  else "FAILED", end_time=int(record["ended_at"] * 1000))

        report = search(frame, params, log_trial)
        best = report["best"]
        mlflow.log_params({f"best.{k}": v for k, v in best["searched"].items()})
        mlflow.log_metrics({f"best_validation_{metric}": best["value"],
                            "best_trial": best["trial"], "trials_failed": report["failed"]})
        fig = history_figure(report)
        mlflow.log_figure(fig, "tune/history.png")
        plt.close(fig)
        mlflow.log_dict(report, "tune/tune.json")
    return report, parent.info.run_id


def record_seconds(params: Params, run_id: str, seconds: float) -> None:
    """The search's wall time on its parent run (known only once the run has ended)."""
    from mlpipeline import tracking

    tracking.client(params).log_metric(run_id, "tune_seconds", seconds)


def main() -> None:
    run(load_params())


if __name__ == "__main__":
    main()
