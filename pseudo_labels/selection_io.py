"""Writing and reading the selected (filtered and balanced) pseudo-labels of a generation.

``gen-<g>/selected/`` holds ``part-NNNNN.parquet`` (the label schema plus an int32 ``weight``),
``summary.json`` and ``_SUCCESS``, with the same discipline as the labels folder: each file is
written to a temporary name and renamed, ``_SUCCESS`` comes last and is removed first when the
selection is rewritten, so a reader never trains on half a selection.

Columns outside the label schema (a ``true_label`` joined in for reporting) are not written: hidden
labels must never reach the training set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import pyarrow as pa

from noisystudent.errors import UserError
from noisystudent.io import clean_temporaries, read_json, write_json, write_text

from .schema import SCHEMA, LabelMetadata
from .store import SHARD_GLOB, SUCCESS, is_complete, read_labels, shard_name, write_shard

SELECTED_SCHEMA = SCHEMA.append(pa.field("weight", pa.int32(), nullable=False))
SUMMARY = "summary.json"


def write_selection(
    folder: str | os.PathLike,
    df: pd.DataFrame,
    summary: dict[str, Any],
    metadata: LabelMetadata,
    rows_per_shard: int = 1_000_000,
) -> Path:
    """Replace the selection in ``folder`` with ``df`` (must have the label columns and ``weight``)."""
    folder = Path(folder)
    missing = set(SELECTED_SCHEMA.names) - set(df.columns)
    if missing:
        raise UserError(f"selection to write lacks column(s) {', '.join(sorted(missing))}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUCCESS).unlink(missing_ok=True)
    clean_temporaries(folder)
    for old in folder.glob(SHARD_GLOB):
        old.unlink()
    table = pa.Table.from_pandas(df[SELECTED_SCHEMA.names], schema=SELECTED_SCHEMA, preserve_index=False)
    n_shards = max(1, -(-len(df) // rows_per_shard))
    for s in range(n_shards):
        write_shard(folder / shard_name(s), table.slice(s * rows_per_shard, rows_per_shard), metadata)
    write_json(folder / SUMMARY, summary)
    write_text(folder / SUCCESS, "")
    return folder


def read_selection(folder: str | os.PathLike, expected: Optional[LabelMetadata] = None) -> pd.DataFrame:
    """The selection written by :func:`write_selection`; refuses an unfinished one."""
    folder = Path(folder)
    if not is_complete(folder):
        raise UserError(f"selection in {folder} is incomplete (no {SUCCESS}); re-run the select step")
    df = read_labels(folder, expected=expected)
    if "weight" not in df.columns:
        raise UserError(f"{folder} holds pseudo-labels without a 'weight' column: not a selection")
    return df


def read_selection_summary(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise UserError(f"selection summary not found: {path}")
    return read_json(path)
