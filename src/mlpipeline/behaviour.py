"""Behavioural checks of a trained model, as in CheckList and Made-With-ML: does it answer the
way the domain says it must, whatever its test metrics? Plain functions on the test table and
a scoring function; the `register` stage runs them on the challenger and the gate acts on them.

- Directional: a feature with `expect: increasing | decreasing` in the schema is moved one
  `step` up (its schema `step`, else the test rows' standard deviation; at most to its schema
  max) on every test row that has it. The task's behaviour score (a probability, the predicted
  value, the expected class) must move that way: at most gate.max_violation_share of the moved
  rows may go the other way. A score that does not move is no violation (trees are flat).
- Invariance: a feature in gate.invariant_features gets another value on every row (another
  of its categories; a number from another test row, drawn with gate.seed). The score may move
  by at most gate.invariance_tolerance, except on gate.max_violation_share of the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Float noise, not a behaviour: a score this close to the old one did not move.
NOISE = 1e-9

Score = Callable[[pd.DataFrame], np.ndarray]  # test features -> one number per row


@dataclass(frozen=True)
class BehaviourResult:
    check: str  # directional | invariance
    feature: str
    expectation: str  # what the score must do, in words
    rows: int  # rows the check moved
    violations: int  # of them, rows that broke the expectation
    max_share: float  # gate.max_violation_share
    note: str = ""

    @property
    def share(self) -> float:
        return round(self.violations / self.rows, 6) if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return self.share <= self.max_share

    @property
    def name(self) -> str:
        return f"{self.check} {self.feature}"

    @property
    def summary(self) -> str:
        return (f"{self.violations} of {self.rows} rows ({self.share:.1%}) broke "
                f"'{self.expectation}', at most {self.max_share:.1%} may")

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "feature": self.feature, "expectation": self.expectation,
                "rows": self.rows, "violations": self.violations, "share": self.share,
                "max_share": self.max_share, "passed": self.passed, "note": self.note}


def directional(features: pd.DataFrame, feature: str, expect: str, score: Score, *,
                step: float | None, high: float | None, max_share: float) -> BehaviourResult:
    """Move `feature` one step up on every row that has it; the score must follow `expect`."""
    column = pd.to_numeric(features[feature], errors="coerce")
    size = float(step) if step is not None else float(column.std())
    moved = column + size
    if high is not None:
        moved = moved.clip(upper=high)
    rows = (column.notna() & (moved > column)).to_numpy()  # rows at the max cannot move up
    expectation = f"{expect} ({feature} +{size:g})"
    if not rows.any():
        return BehaviourResult("directional", feature, expectation, 0, 0, max_share,
                               note="no test row could move")
    before = score(features[rows])
    after = score(features[rows].assign(**{feature: moved[rows].to_numpy()}))
    change = after - before
    wrong = change < -NOISE if expect == "increasing" else change > NOISE
    followed = int((~wrong & (np.abs(change) > NOISE)).sum())
    return BehaviourResult("directional", feature, expectation, int(rows.sum()),
                           int(wrong.sum()), max_share,
                           note=f"{followed} rows moved the expected way, the rest not at all")


def invariance(features: pd.DataFrame, feature: str, categories: list[str] | None,
               score: Score, *, tolerance: float, max_share: float, seed: int
               ) -> BehaviourResult:
    """Give `feature` another value on every row: the score must stay within `tolerance`."""
    rng = np.random.default_rng(seed)
    column = features[feature]
    if categories:  # another category than the row's own, drawn uniformly
        values = column.astype("object").to_numpy()
        others = [np.array([c for c in categories if c != v] or categories) for v in values]
        swapped = np.array([pick[rng.integers(len(pick))] for pick in others], dtype=object)
    else:  # a number another test row has
        swapped = column.to_numpy()[rng.permutation(len(column))]
    before = score(features)
    after = score(features.assign(**{feature: swapped}))
    moved = np.abs(after - before) > tolerance + NOISE
    return BehaviourResult("invariance", feature, f"moves by at most {tolerance:g}",
                           len(features), int(moved.sum()), max_share,
                           note=f"largest move {float(np.abs(after - before).max()):.4g}")
