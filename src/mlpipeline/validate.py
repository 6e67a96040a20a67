"""Stage `validate`: check the ingested table against the schema; write a typed copy.

A JSON report lists every rule with its counts. On a hard failure the stage exits non-zero,
naming the column, the rule and how many rows broke it, and writes no output, so DVC runs
nothing downstream.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import pandas as pd

from mlpipeline.config import DATASET, VALIDATED, VALIDATION_REPORT, Params, load_params
from mlpipeline.schema import Check, check_frame, coerce


def validate(frame: pd.DataFrame, params: Params) -> list[Check]:
    rules = params.validate_
    return check_frame(
        frame,
        params.schema,
        min_rows=rules.min_rows,
        max_unknown_category_share=rules.max_unknown_category_share,
        max_out_of_range_share=rules.max_out_of_range_share,
    )


def main() -> None:
    params = load_params()
    frame = pd.read_parquet(params.path(DATASET))
    checks = validate(frame, params)
    failed = [c for c in checks if not c.passed]
    report = params.path(VALIDATION_REPORT)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({
        "passed": not failed,
        "rows": len(frame),
        "failed": len(failed),
        "checks": [asdict(c) for c in checks],
    }, indent=2) + "\n")
    out = params.path(VALIDATED)
    if failed:
        out.unlink(missing_ok=True)
        lines = "\n".join(f"  - {c.message}" for c in failed)
        sys.exit(
            f"validate: FAILED {len(failed)} of {len(checks)} checks on {len(frame)} rows:\n"
            f"{lines}\nFix the batch in data/raw (or the schema in params.yaml); "
            f"report: {VALIDATION_REPORT}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    coerce(frame, params.schema).to_parquet(out, index=False)
    print(f"validate: {len(frame)} rows passed {len(checks)} checks -> {VALIDATED}")


if __name__ == "__main__":
    main()
