"""The prediction log's format, shared by the service that writes it and the monitoring that
reads it: Parquet parts under `<serving.prediction_log_dir>/date=YYYY-MM-DD/`, one row per
served record (its features, its id under the schema's `id_column` when the request
carried one, the task's answer columns: `prediction` with `probability` (binary) or
`probabilities`, one per class in the schema's order (multiclass), or the value alone
(regression); `model_version`, `request_id`, `served_at`),
each part named `part-<time>-<replica>-<pid>-<seq>.parquet`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PARTS = "date=*/*.parquet"


def read_log(folder: Path) -> pd.DataFrame:
    """All logged predictions, every replica's parts as one table (empty frame if none)."""
    parts = sorted(folder.glob(PARTS))
    if not parts:
        return pd.DataFrame()
    # Concatenate as Arrow: a part whose column is all null has type null, which
    # Arrow promotes cleanly (pandas warns and may change the dtype).
    tables = [pq.read_table(p) for p in parts]
    return pa.concat_tables(tables, promote_options="default").to_pandas()
