"""The validation gate: may a newly trained model replace the champion? A plain function on
metrics; the `register` stage gathers the figures and acts on the verdict. Which metrics a
lower value improves (rmse, mae, mape, log_loss) the task says (mlpipeline.tasks)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.behaviour import BehaviourResult
from mlpipeline.config import GateParams


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float
    threshold: float
    passed: bool
    note: str = ""
    count: bool = False  # value and threshold are counts (of slices), not a metric

    def shown(self, number: float) -> str:
        return f"{number:.0f}" if self.count else f"{number:.4f}"


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    checks: list[GateCheck] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SliceResult:
    """The compare metric of both models on the test rows of one `feature=value` slice."""
    feature: str
    value: str
    rows: int
    challenger: float | None
    champion: float | None
    threshold: float | None  # the least (or, lower is better, the most) the challenger may be
    passed: bool | None  # None: not compared, `note` says why
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.feature}={self.value}"


@dataclass(frozen=True)
class Comparison:
    """The test rows the champion is compared on: those after the newest row it trained on
    (a model scored again on rows it learnt from looks better than it is), and the
    challenger's metrics on the same rows."""
    rows: int  # test rows compared
    test_rows: int  # the whole test split
    champion_trained_until: str  # ISO time; "" when unknown (then every row is compared)
    source: str  # where that time comes from (its trained_until tag, or its window)
    challenger: dict[str, float]  # the challenger's metrics on those rows

    @property
    def restricted(self) -> bool:
        return self.rows < self.test_rows

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def described(self) -> str:
        if not self.restricted:
            return "the same rows"
        return (f"the same {self.rows} of {self.test_rows} test rows, those after its training "
                f"(to {self.champion_trained_until})")


def champion_seen_until(tags: dict[str, str], batch_days: int
                        ) -> tuple[pd.Timestamp | None, str]:
    """The newest time among the rows a registered version trained on: its `trained_until`
    tag; for a version registered before that tag existed, the end of its training window's
    last batch (its name plus `batch_days`, validate.max_batch_days: no row of that batch is
    dated later); None when neither tag is there."""
    if tags.get("trained_until"):
        return pd.Timestamp(tags["trained_until"]), "its trained_until tag"
    window = tags.get("training_window", "")
    if ".." in window:
        end = window.split("..")[1]
        bound = pd.Timestamp(end) + pd.Timedelta(days=batch_days) - pd.Timedelta(1, "us")
        return bound, f"its training window {window} (+{batch_days} days: its last batch)"
    return None, "unknown (no trained_until or training_window tag)"


def unseen_rows(times: pd.Series, seen_until: pd.Timestamp | None) -> np.ndarray:
    """Which rows are dated after `seen_until` (every row when it is None)."""
    if seen_until is None:
        return np.ones(len(times), dtype=bool)
    zone = getattr(pd.to_datetime(times).dt, "tz", None)
    if zone is not None and seen_until.tzinfo is None:
        seen_until = seen_until.tz_localize(zone)
    elif zone is None and seen_until.tzinfo is not None:
        seen_until = seen_until.tz_convert("UTC").tz_localize(None)
    return (pd.to_datetime(times) > seen_until).to_numpy()


MISSING = "(missing)"


def slice_labels(test: pd.DataFrame, features: list[str], numeric: Collection[str],
                 bins: int) -> dict[str, pd.Series]:
    """Each row's slice per feature: its category, or for a number its quantile bin of the
    test split, `(lo, hi]` as pandas cuts it (equal edges merge)."""
    labels = {}
    for feature in features:
        column = test[feature]
        if feature in numeric:
            cut = pd.qcut(pd.to_numeric(column), q=bins, duplicates="drop", precision=6)
            text = cut.astype("object").map(
                lambda b: f"({b.left:g}, {b.right:g}]" if isinstance(b, pd.Interval) else b)
        else:
            text = column.astype("object").map(str)
        labels[feature] = text.where(column.notna(), MISSING).reset_index(drop=True)
    return labels


def regression_bound(theirs: float, tolerance: float, lower_is_better: bool) -> float:
    """The worst figure that is still no regression against `theirs` (the champion's)."""
    return theirs + tolerance if lower_is_better else theirs - tolerance


def within(value: float, bound: float, lower_is_better: bool) -> bool:
    """`value` is on the right side of `bound`. `not (...)` would pass a NaN; comparing this
    way fails it, as a missing figure must."""
    return value <= bound if lower_is_better else value >= bound


def compare_slices(labels: dict[str, pd.Series], metric: Callable[[np.ndarray], float],
                   champion_metric: Callable[[np.ndarray], float] | None, *,
                   lower_is_better: bool, min_rows: int, tolerance: float) -> list[SliceResult]:
    """Every slice of every feature: the challenger's metric, and the champion's on the same
    rows; a slice fails when the challenger trails the champion there by more than the
    tolerance. `metric(mask)` scores the challenger on the masked test rows (NaN when the
    metric is undefined there, e.g. ROC AUC on one class)."""
    results = []
    for feature, column in labels.items():
        for value in sorted(column.unique(), key=str):
            mask = (column == value).to_numpy()
            rows = int(mask.sum())
            if rows < min_rows:
                results.append(SliceResult(feature, value, rows, None, None, None, None,
                                           f"fewer than gate.slice_min_rows ({min_rows})"))
                continue
            ours = _figure(metric, mask)
            theirs = _figure(champion_metric, mask) if champion_metric else None
            if theirs is None or math.isnan(ours) or math.isnan(theirs):
                why = ("no champion to compare with" if champion_metric is None
                       else "the metric is undefined on this slice (e.g. one class only)")
                results.append(SliceResult(feature, value, rows, _round(ours), _round(theirs),
                                           None, None, why))
                continue
            bound = regression_bound(theirs, tolerance, lower_is_better)
            passed = within(ours, bound, lower_is_better)
            results.append(SliceResult(feature, value, rows, _round(ours), _round(theirs),
                                       _round(bound), passed))
    return results


def _figure(metric: Callable[[np.ndarray], float] | None, mask: np.ndarray) -> float:
    if metric is None:
        return float("nan")
    try:
        with warnings.catch_warnings():  # one class in a slice: sklearn warns, we say why
            warnings.simplefilter("ignore")
            return float(metric(mask))
    except ValueError:  # a metric sklearn refuses on these rows
        return float("nan")


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 6)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    gate: GateParams,
    *,
    lower_is_better: Collection[str],
    champion_version: str | None = None,
    same_model_as_champion: bool = False,
    champion_error: str = "",
    slices: Sequence[SliceResult] = (),
    behaviour: Sequence[BehaviourResult] = (),
    comparison: Comparison | None = None,
) -> GateVerdict:
    """Floors first, then no regression against the champion scored on the same test rows.

    `champion` is None when there is none yet: then clearing the floors is enough.
    `same_model_as_champion` (the same trained artefact, byte for byte) means the challenger
    would be the champion again: nothing to promote. `champion_error` says the champion exists
    but could not be scored on the current rows (e.g. the schema changed): then nothing is
    promoted automatically, as no like-for-like comparison is possible. `slices` (from
    `compare_slices`): a slice where the challenger trails the champion by more than
    gate.slice_tolerance fails the gate, named with both figures and its rows. `behaviour`
    (mlpipeline.behaviour): a directional or invariance check broken on more than
    gate.max_violation_share of its rows fails the gate, named with the feature and the share.
    `comparison`: the test rows after the champion's training, and the challenger's metrics
    there; the champion's are on those rows. When none is left there is no fair comparison:
    the challenger is not promoted automatically, and the verdict says so.
    """
    def holds(metric: str, value: float, bound: float) -> bool:
        return within(value, bound, metric in lower_is_better)

    checks = []
    for metric, floor in gate.min_metrics.items():
        bound_word = "<=" if metric in lower_is_better else ">="
        checks.append(GateCheck(f"{metric} {bound_word} floor", challenger[metric], floor,
                                holds(metric, challenger[metric], floor)))
    metric = str(gate.compare_metric)
    if champion is not None:
        lower = metric in lower_is_better
        ours = (comparison.challenger if comparison else challenger)[metric]
        bound = regression_bound(champion[metric], gate.tolerance, lower)
        rows = comparison.described if comparison else "the same rows"
        checks.append(GateCheck(
            f"{metric} vs champion v{champion_version}", ours, round(bound, 6),
            holds(metric, ours, bound),
            note=f"champion {champion[metric]:.4f} on {rows}, tolerance {gate.tolerance}"
                 f" ({'lower' if lower else 'higher'} is better)",
        ))

    compared = [s for s in slices if s.passed is not None]
    for worse in (s for s in compared if not s.passed):
        checks.append(GateCheck(
            f"{metric} on {worse.name}", worse.challenger or 0.0, worse.threshold or 0.0, False,
            note=f"champion {worse.champion:.4f} on the same {worse.rows} rows, slice "
                 f"tolerance {gate.slice_tolerance}"))
    if compared and all(s.passed for s in compared):
        checks.append(GateCheck(
            f"{metric} on every slice vs champion", float(len(compared)), float(len(compared)),
            True, note=f"{len(compared)} slices of {', '.join(gate.slices)} with at least "
                       f"{gate.slice_min_rows} rows, slice tolerance {gate.slice_tolerance}",
            count=True))

    for result in behaviour:
        checks.append(GateCheck(f"{result.name} violations", result.share, result.max_share,
                                result.passed, note=result.summary))
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(f"{c.name}: {c.shown(c.value)} vs {c.shown(c.threshold)}"
                           + (f" ({c.note})" if c.note else "") for c in failed)
        return GateVerdict(False, f"rejected: {reason}", checks)
    if champion_error:
        return GateVerdict(False, f"rejected: champion v{champion_version} could not be scored "
                                  f"on the current test split ({champion_error})", checks)
    if same_model_as_champion:
        return GateVerdict(False, f"kept champion v{champion_version}: the challenger is the "
                                  "same trained model, nothing new to promote", checks)
    if comparison is not None and comparison.rows == 0:
        return GateVerdict(False, (
            f"kept champion v{champion_version}: none of the {comparison.test_rows} test rows "
            f"is newer than its training (to {comparison.champion_trained_until}, "
            f"{comparison.source}), so the two cannot be compared on rows neither learnt from; "
            "the challenger cleared the floors but is not promoted automatically (a person may: "
            "python -m mlpipeline.registry promote VERSION)"), checks)
    if champion is None:
        return GateVerdict(True, "promoted: first model to clear the floors", checks)
    return GateVerdict(True, f"promoted: clears the floors and does not regress against "
                             f"champion v{champion_version}", checks)


def format_table(verdict: GateVerdict) -> str:
    rows = [("check", "value", "threshold", "result")]
    rows += [(c.name, c.shown(c.value), c.shown(c.threshold), "pass" if c.passed else "FAIL")
             for c in verdict.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    return "\n".join(lines)
