"""The monitoring decisions as plain functions on data: no files, no MLflow, no Evidently.

- `column_drift`: per-column verdicts (features, target, predictions) read from an Evidently
  report's results.
- `performance`: the champion's real metrics on newly labelled data against the gate's floors.
- `decide`: retrain or not, with every reason, after the guards against retraining storms.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from mlpipeline.gate import regression_bound, within

RETRAIN, NO_RETRAIN = "retrain", "no-retrain"


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    features: list[FeatureDrift]
    drift_share: float  # the share of drifted features that counts as drift
    reference_rows: int
    current_rows: int
    # The model's side: "target" (outcomes vs the training target) and "prediction" (the
    # window's predictions vs the model's own on its reference), where the window has them.
    # Reported, not triggers: a drop in performance is the trigger they would anticipate.
    outputs: dict[str, FeatureDrift] = field(default_factory=dict)
    tested_rows: int | None = None  # a large window is tested on a sample of this many rows

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def share(self) -> float:
        return len(self.drifted) / len(self.features) if self.features else 0.0

    @property
    def detected(self) -> bool:
        return self.share >= self.drift_share

    def as_dict(self) -> dict[str, Any]:
        return {"detected": self.detected, "share": round(self.share, 4),
                "drift_share": self.drift_share, "drifted": self.drifted,
                "reference_rows": self.reference_rows, "current_rows": self.current_rows,
                "tested_rows": self.tested_rows or self.current_rows,
                "features": [asdict(f) for f in self.features],
                **{name: asdict(self.outputs[name]) if name in self.outputs else None
                   for name in ("target", "prediction")}}


def column_drift(report: dict[str, Any], columns: list[str]) -> dict[str, FeatureDrift]:
    """Per-column verdicts from an Evidently 0.7 report (`snapshot.dict()`).

    The verdict is the status of each column's drift test (FAIL = drifted), not a threshold
    applied here: Evidently picks the method and threshold per column type and size unless
    params.yaml names them, and the test carries whichever it used.
    """
    scores = {m["id"]: m["value"] for m in report["metrics"]}
    found: dict[str, FeatureDrift] = {}
    for test in report["tests"]:
        config = test.get("metric_config", {})
        spec = config.get("params", {})
        if not spec.get("type", "").endswith(":ValueDrift"):
            continue
        found[spec["column"]] = FeatureDrift(
            name=spec["column"], method=str(spec.get("method")),
            score=float(scores[config["metric_id"]]), threshold=float(spec.get("threshold")),
            drifted=test["status"] == "FAIL")
    missing = [name for name in columns if name not in found]
    if missing:
        raise ValueError(f"the drift report has no verdict for {missing}")
    return {name: found[name] for name in columns}


@dataclass(frozen=True)
class PerformanceResult:
    rows: int
    metrics: dict[str, float]
    floors: dict[str, float]
    source: str  # what was scored: the served predictions, or the champion re-scored
    below: list[str] = field(default_factory=list)  # metrics under their floor
    # Served predictions: how the outcomes found them (on_id, on_features) and how many
    # found none (outcomes_without_prediction).
    joined: dict[str, int] | None = None
    ceilings: list[str] = field(default_factory=list)  # floors of lower-is-better metrics
    version: str | None = None  # the version these figures are of (the champion's)
    # Every version the outcomes found an answer of: rows, metrics (with enough rows) and
    # source; the champion's entry is what `metrics` holds (re-scored when it answered few).
    by_version: dict[str, dict[str, Any]] = field(default_factory=dict)

    def shown(self) -> str:
        """Each floored metric with its value and bound, e.g. `rmse 812.3 (<= 900)`."""
        return ", ".join(
            f"{name} {self.metrics.get(name, float('nan')):.4f} "
            f"({'<=' if name in self.ceilings else 'floor'} {floor})"
            for name, floor in self.floors.items())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def described(self) -> str:
        rows = f"{self.source}, {self.rows} rows"
        if self.version is not None and not self.source.startswith("champion v"):
            rows = f"champion v{self.version}'s {rows}"
        if self.joined:
            rows += (f": {self.joined['on_id']} joined on id, {self.joined['on_features']} on "
                     f"feature values, {self.joined['outcomes_without_prediction']} outcomes "
                     "without a prediction")
        return rows


def performance(metrics: dict[str, float], rows: int, floors: dict[str, float],
                lower_is_better: Collection[str], source: str = "champion re-scored",
                joined: dict[str, int] | None = None, version: str | None = None,
                by_version: dict[str, dict[str, Any]] | None = None) -> PerformanceResult:
    """The metrics that break their floor (for a lower-is-better metric, rise above it)."""
    def holds(name: str, floor: float) -> bool:
        # A missing or NaN metric (one class only in the data) fails too.
        return within(metrics.get(name, float("nan")), floor, name in lower_is_better)

    below = [name for name, floor in floors.items() if not holds(name, floor)]
    return PerformanceResult(rows, metrics, dict(floors), source, below, joined,
                             sorted(set(lower_is_better) & set(floors)), version,
                             dict(by_version or {}))


def batches_after(batch_dates: list[dt.date], last_trained_end: dt.date | None) -> int | None:
    """Batches delivered after the newest trained-on batch (None: never trained). Counted as
    files, not days, so weekly, monthly, yearly and irregular batches all count the same."""
    if last_trained_end is None:
        return None
    return sum(day > last_trained_end for day in batch_dates)


def slide_window(batch_dates: list[dt.date], start: dt.date, end: dt.date,
                 new_end: dt.date) -> tuple[dt.date, dt.date]:
    """The training window moved to end at batch `new_end`, keeping its number of batches.

    Whole batches, never days: with yearly batches a leap year, or months of 28 to 31 days,
    would otherwise push the first batch out of a window slid by the days between two ends.
    """
    dates = sorted(set(batch_dates))
    size = max(1, sum(start <= day <= end for day in dates))
    upto = [day for day in dates if day <= new_end]
    return upto[max(0, len(upto) - size)], new_end


@dataclass(frozen=True)
class Verdict:
    action: str  # retrain | no-retrain
    reasons: list[str]
    triggers: list[str]  # what asked for a retrain: drift, performance, force
    decided_by: str = ""  # the reason that decided the action (the CT line shows it)

    @property
    def retrain(self) -> bool:
        return self.action == RETRAIN

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(*, current_rows: int, min_rows: int, drift: DriftResult | None,
           perf: PerformanceResult | None, batches_since_training: int | None,
           cooldown_batches: int, force: bool = False) -> Verdict:
    """Retrain or not. `force` (a scheduled retrain) skips the drift verdict and the cooldown;
    the same-data guard runs later, once the new training split exists."""
    triggers: list[str] = []
    reasons: list[str] = []
    asked: list[str] = []  # the reasons of the triggers: what asks for a retrain
    if current_rows < min_rows:
        reason = (f"current window has {current_rows} rows, fewer than "
                  f"monitoring.min_rows={min_rows}: too few for a verdict")
        if force:
            forced = "forced: retrain regardless"
            return Verdict(RETRAIN, [reason, forced], ["force"], forced)
        return Verdict(NO_RETRAIN, [reason], [], reason)
    if drift is not None:
        figures = f"{len(drift.drifted)} of {len(drift.features)} features drifted " \
                  f"({drift.share:.0%}, threshold {drift.drift_share:.0%})"
        if drift.tested_rows is not None and drift.tested_rows < drift.current_rows:
            figures += (f" on a seeded sample of {drift.tested_rows} of the window's "
                        f"{drift.current_rows} rows (monitoring.max_rows)")
        if drift.detected:
            triggers.append("drift")
            asked.append(f"drift: {figures}: {', '.join(drift.drifted)}")
            reasons.append(asked[-1])
        else:
            reasons.append(f"no drift: {figures}")
    if drift is not None:
        for name, output in drift.outputs.items():  # reported; not a trigger of its own
            reasons.append(f"{name} drift: {'yes' if output.drifted else 'no'} "
                           f"({output.method} {output.score:.4g}, threshold "
                           f"{output.threshold:g})")
    if perf is not None:
        shown = perf.shown()
        if perf.below:
            triggers.append("performance")
            asked.append(f"performance below floor ({perf.described}): {shown}")
            reasons.append(asked[-1])
        else:
            reasons.append(f"performance holds ({perf.described}): {shown}")
    if force:
        forced = "forced: retrain regardless of drift and cooldown"
        return Verdict(RETRAIN, [*reasons, forced], [*triggers, "force"], forced)
    if not triggers:
        return Verdict(NO_RETRAIN, reasons, [], reasons[0] if reasons else "")
    if batches_since_training is not None and batches_since_training < cooldown_batches:
        cooldown = (f"cooldown: the last training run ended {batches_since_training} "
                    f"batch(es) ago, ct.cooldown_batches={cooldown_batches}")
        return Verdict(NO_RETRAIN, [*reasons, cooldown], triggers, cooldown)
    return Verdict(RETRAIN, reasons, triggers, asked[0])


def nothing_landed(trained_to: dt.date | None) -> Verdict:
    """The verdict when no batch arrived after the champion's training data."""
    reason = (f"no batch landed after the champion's training data (its window ends "
              f"{trained_to})")
    return Verdict(NO_RETRAIN, [reason], [], reason)


def same_data_reason(new_data_version: str, champion_data_version: str | None) -> str | None:
    """The guard against retraining on exactly the champion's training data."""
    if champion_data_version and new_data_version == champion_data_version:
        return (f"the new training split is the champion's own data version "
                f"({new_data_version}): nothing new to learn from")
    return None


def held_back(verdict: Verdict, same_data: str) -> Verdict:
    """A retrain verdict withdrawn by the same-data guard (its triggers kept for the record);
    the guard's reason first: it decided."""
    return Verdict(NO_RETRAIN, [same_data, *verdict.reasons], verdict.triggers, same_data)


PROMOTE, KEEP, REJECT = "promote", "keep", "reject"


@dataclass(frozen=True)
class ShadowVerdict:
    """What a CT cycle does with the challenger answering in shadow (registry tag `shadow`)."""

    action: str  # promote | keep (wait for more evidence) | reject
    version: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def shadow_verdict(evidence: dict[str, Any], *, min_rows: int, metric: str, tolerance: float,
                   lower_is_better: bool) -> ShadowVerdict:
    """Promote only on enough labelled requests both models answered, when the shadow is no
    worse than the champion there (within the gate's tolerance); reject when it is worse;
    else keep waiting. `evidence` is monitoring.shadow's."""
    version = str(evidence["shadow_version"])
    labelled = evidence.get("labelled") or {}
    rows = int(labelled.get("rows", 0))
    if rows < min_rows:
        return ShadowVerdict(KEEP, version, f"v{version} kept in shadow: {rows} labelled "
                                            f"requests so far, promotion.shadow_min_rows is "
                                            f"{min_rows} ({evidence['requests']} requests "
                                            "answered by both)")
    ours, theirs = labelled["shadow"][metric], labelled["champion"][metric]
    holds = within(ours, regression_bound(theirs, tolerance, lower_is_better), lower_is_better)
    figures = (f"{metric} {ours:.4f} vs champion v{evidence['champion_version']} "
               f"{theirs:.4f} on the same {rows} labelled requests (tolerance {tolerance})")
    if holds:
        return ShadowVerdict(PROMOTE, version, f"v{version} promoted on shadow evidence: "
                                               f"{figures}")
    return ShadowVerdict(REJECT, version, f"v{version} rejected on shadow evidence: {figures}")
