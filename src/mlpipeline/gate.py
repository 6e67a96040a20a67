"""The validation gate: may a newly trained model replace the champion? A plain function on
metrics; the `register` stage gathers the figures and acts on the verdict. Which metrics a
lower value improves (rmse, mae, mape, log_loss) the task says (mlpipeline.tasks)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from mlpipeline.config import GateParams


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float
    threshold: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    checks: list[GateCheck] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    gate: GateParams,
    *,
    lower_is_better: Collection[str],
    champion_version: str | None = None,
    same_model_as_champion: bool = False,
    champion_error: str = "",
) -> GateVerdict:
    """Floors first, then no regression against the champion scored on the same test rows.

    `champion` is None when there is none yet: then clearing the floors is enough.
    `same_model_as_champion` (the same trained artefact, byte for byte) means the challenger
    would be the champion again: nothing to promote. `champion_error` says the champion exists
    but could not be scored on the current rows (e.g. the schema changed): then nothing is
    promoted automatically, as no like-for-like comparison is possible.
    """
    def holds(metric: str, value: float, bound: float) -> bool:
        # `not (... )` would pass a NaN; comparing this way fails it, as a missing figure must.
        return value <= bound if metric in lower_is_better else value >= bound

    checks = []
    for metric, floor in gate.min_metrics.items():
        bound_word = "<=" if metric in lower_is_better else ">="
        checks.append(GateCheck(f"{metric} {bound_word} floor", challenger[metric], floor,
                                holds(metric, challenger[metric], floor)))
    metric = str(gate.compare_metric)
    if champion is not None:
        lower = metric in lower_is_better
        bound = champion[metric] + gate.tolerance if lower else champion[metric] - gate.tolerance
        checks.append(GateCheck(
            f"{metric} vs champion v{champion_version}", challenger[metric], round(bound, 6),
            holds(metric, challenger[metric], bound),
            note=f"champion {champion[metric]:.4f} on the same rows, tolerance {gate.tolerance}"
                 f" ({'lower' if lower else 'higher'} is better)",
        ))

    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(f"{c.name}: {c.value:.4f} vs {c.threshold:.4f}" for c in failed)
        return GateVerdict(False, f"rejected: {reason}", checks)
    if champion_error:
        return GateVerdict(False, f"rejected: champion v{champion_version} could not be scored "
                                  f"on the current test split ({champion_error})", checks)
    if champion is None:
        return GateVerdict(True, "promoted: first model to clear the floors", checks)
    if same_model_as_champion:
        return GateVerdict(False, f"kept champion v{champion_version}: the challenger is the "
                                  "same trained model, nothing new to promote", checks)
    return GateVerdict(True, f"promoted: clears the floors and does not regress against "
                             f"champion v{champion_version}", checks)


def format_table(verdict: GateVerdict) -> str:
    rows = [("check", "value", "threshold", "result")]
    rows += [(c.name, f"{c.value:.4f}", f"{c.threshold:.4f}", "pass" if c.passed else "FAIL")
             for c in verdict.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    return "\n".join(lines)
