"""A seeded, synthetic stream of consumer-loan applications and whether each defaulted.

Shape of the data (one weekly batch at a time):
- 13 features: 9 numeric (age, annual_income, employment_years, credit_score, loan_amount,
  interest_rate, debt_to_income, open_accounts, delinquencies_2y) and 4 categorical
  (term, home_ownership, purpose, region); `employment_years` and `credit_score` have missing
  values, as bureau and HR data do.
- `application_id` (unique: the batch's first day and the row's number), `application_date`,
  a timestamp inside the batch's week, and `default` (0/1), about 15% positives.
- The label comes from a logistic model of the features plus noise, so a classifier can learn
  it but not perfectly (ROC AUC around 0.8).
- The same applications can carry another outcome instead (`source.outcome`), for the other
  tasks: `loss_amount`, the amount the lender expects to lose (loan x default risk x loss
  given default, a positive number: regression), or `risk_grade`, the grade A (safest) to D
  an underwriter gives it from the same risk (multiclass). Their own draws come from a
  separate generator, so the features are the same bytes whatever the outcome.

Drift, switched on from a given batch by `source.drift` in params.yaml:
- covariate drift (a downturn): lower incomes and credit scores, larger loans, higher
  debt-to-income, more small-business loans. The label model stays the same.
- concept drift: the same applicant now defaults for other reasons: debt-to-income and the
  south region weigh much more, credit score less. A model trained before it loses accuracy.

Each batch draws from its own generator seeded by (seed, batch index), so batch 3 is the same
bytes whether 4 or 40 batches have been produced: old data never changes when new data arrives.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

TERMS = ["36 months", "60 months"]
HOME = ["RENT", "MORTGAGE", "OWN"]
PURPOSES = ["debt_consolidation", "credit_card", "home_improvement", "car", "medical",
            "small_business", "other"]
REGIONS = ["north", "south", "east", "west", "central"]
OUTCOMES = ("default", "loss_amount", "risk_grade")
GRADES = ["A", "B", "C", "D"]
# Risk (the default model's log-odds) at which the grades change: about 30/30/25/15% of the
# applications before any drift.
GRADE_CUTS = [-2.9, -1.7, -0.6]


def make_batch(
    index: int,
    *,
    seed: int,
    start_date: dt.date,
    batch_days: int,
    rows: int,
    covariate: float = 0.0,
    concept: float = 0.0,
    outcome: str = "default",
) -> pd.DataFrame:
    """Batch number `index`; `covariate` and `concept` (0 = none, 1 = full) set its drift;
    `outcome` names the target column (one of OUTCOMES)."""
    rng = np.random.default_rng([seed, index])
    n = rows
    age = np.clip(rng.normal(42, 12, n), 18, 85).round()
    income = np.exp(rng.normal(np.log(58_000), 0.5, n)) * (1 - 0.3 * covariate)
    income = np.clip(income, 6_000, 900_000).round(-2)
    employment = np.minimum(age - 18, rng.exponential(6, n)).round(1)
    credit = np.clip(rng.normal(690 - 45 * covariate, 60, n), 300, 850).round()
    loan = np.clip(np.exp(rng.normal(np.log(14_000), 0.6, n)) * (1 + 0.35 * covariate),
                   500, 100_000).round(-1)
    term = rng.choice(TERMS, n, p=[0.72, 0.28])
    rate = np.clip(26 - (credit - 300) / 550 * 19 + rng.normal(0, 1.5, n)
                   + 2.0 * (term == TERMS[1]), 3, 36).round(2)
    dti = np.clip(rng.beta(2.2, 5, n) * 60 + 8 * covariate, 0, 80).round(1)
    accounts = np.clip(rng.poisson(8, n), 0, 60).astype(float)
    delinquencies = np.clip(rng.poisson(0.3, n), 0, 20).astype(float)
    home = rng.choice(HOME, n, p=[0.45, 0.4, 0.15])
    purpose_p = np.array([0.45, 0.2, 0.1, 0.08, 0.05, 0.05, 0.07])
    purpose_p[5] += 0.12 * covariate  # small business borrowing rises in a downturn
    purpose = rng.choice(PURPOSES, n, p=purpose_p / purpose_p.sum())
    region = rng.choice(REGIONS, n, p=[0.22, 0.2, 0.2, 0.2, 0.18])

    def z(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
        return (x - mean) / sd

    credit_filled = credit  # the label sees the true score even where the bureau field is lost
    burden = np.log(loan / income)
    logit = (
        -2.45
        + (0.75 + 0.9 * concept) * z(dti, 18, 10)
        - (1.0 - 0.7 * concept) * z(credit_filled, 690, 60)
        + 0.45 * z(burden, -1.4, 0.8)
        + 0.35 * (term == TERMS[1])
        + 0.4 * delinquencies
        + 0.35 * (purpose == "small_business")
        + 0.2 * (home == "RENT")
        - 0.15 * z(employment, 6, 6)
        + 1.3 * concept * (region == "south")
        + rng.normal(0, 0.6, n)
    )
    default = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    # Missing values, as real feeds have them.
    employment = np.where(rng.random(n) < 0.05, np.nan, employment)
    credit = np.where(rng.random(n) < 0.03, np.nan, credit)

    start = pd.Timestamp(start_date) + pd.Timedelta(days=batch_days * index)
    seconds = np.sort(rng.integers(0, batch_days * 86_400, n))
    frame = pd.DataFrame({
        # The lender's own reference: outcomes arrive with it, requests may carry it.
        "application_id": [f"{start:%Y%m%d}-{i:05d}" for i in range(1, n + 1)],
        "application_date": start + pd.to_timedelta(seconds, unit="s"),
        "age": age,
        "annual_income": income,
        "employment_years": employment,
        "credit_score": credit,
        "loan_amount": loan,
        "interest_rate": rate,
        "debt_to_income": dti,
        "open_accounts": accounts,
        "delinquencies_2y": delinquencies,
        "term": term,
        "home_ownership": home,
        "purpose": purpose,
        "region": region,
    })
    if outcome == "default":
        return frame.assign(default=default)
    own = np.random.default_rng([seed, index, OUTCOMES.index(outcome)])
    if outcome == "loss_amount":
        # Loss given default: longer loans lose more, secured ones (a home) less; under the
        # concept drift, defaults in the south recover much less.
        lgd = np.clip(0.45 + 0.15 * (term == TERMS[1]) - 0.15 * np.isin(home, HOME[1:])
                      + 0.3 * concept * (region == "south") + own.normal(0, 0.05, n),
                      0.05, 0.95)
        risk = 1 / (1 + np.exp(-logit))
        return frame.assign(loss_amount=(loan * risk * lgd
                                         * np.exp(own.normal(0, 0.2, n))).round(2))
    if outcome == "risk_grade":
        grade = np.digitize(logit + own.normal(0, 0.5, n), GRADE_CUTS)
        return frame.assign(risk_grade=np.asarray(GRADES)[grade])
    raise ValueError(f"unknown outcome {outcome!r}: one of {', '.join(OUTCOMES)}")
