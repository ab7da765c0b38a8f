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
from typing import Any, Optional, Sequence

import numpy as np

import pandas as pd
import pyarrow as pa

from noisystudent.errors import UserError
from noisystudent.io import read_json, write_json, write_text

from .schema import SCHEMA, SELECTED_SCHEMA, LabelMetadata
from .store import SUCCESS, SUMMARY, clear_shards, is_complete, read_labels, shard_name, write_shard
from .streamed_select import select_folder  # the pipeline's selection, written in this folder format

__all__ = ["SELECTED_SCHEMA", "SUMMARY", "read_selection", "read_selection_arrow", "read_selection_summary",
           "read_selection_targets", "select_folder", "topk_arrays", "write_selection"]


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
    clear_shards(folder)
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


def read_selection_arrow(folder: str | os.PathLike, columns: Sequence[str], expected: Optional[LabelMetadata] = None) -> pa.Table:
    """Columns of a finished selection as one Arrow table (no pandas, no Python object per row)."""
    import pyarrow.parquet as pq

    from .store import check_metadata, list_shards, read_metadata

    folder = Path(folder)
    if not is_complete(folder):
        raise UserError(f"selection in {folder} is incomplete (no {SUCCESS}); re-run the select step")
    shards = list_shards(folder)
    ref = expected or read_metadata(shards[0])
    tables = []
    for s in shards:
        check_metadata(read_metadata(s), ref, str(s), "the selection's first shard")
        tables.append(pq.read_table(s, columns=list(columns)).replace_schema_metadata(None))
    return pa.concat_tables(tables)


def read_selection_targets(folder: str | os.PathLike, expected: Optional[LabelMetadata] = None
                           ) -> tuple[pa.ChunkedArray, np.ndarray, np.ndarray, np.ndarray]:
    """What a student trains on, read shard by shard: ``(image_id, topk_classes (N, k) int32, topk_probs
    (N, k) float32, weight (N,) int64)``.

    The arrays are allocated once at their final size (N from the shards' footers) and each shard is
    converted into its slice and dropped, so the peak is the result plus one shard, where reading every
    shard into one table and converting it held the table, its combined columns and the arrays at once
    (~200 bytes a row at 10^6 rows, measured with ``make bench-scale``). The ids stay Arrow strings."""
    import pyarrow.parquet as pq

    from .store import check_metadata, list_shards, read_metadata

    folder = Path(folder)
    if not is_complete(folder):
        raise UserError(f"selection in {folder} is incomplete (no {SUCCESS}); re-run the select step")
    shards = list_shards(folder)
    ref = expected or read_metadata(shards[0])
    files = [pq.ParquetFile(s) for s in shards]
    n = sum(f.metadata.num_rows for f in files)
    k = int(ref.topk)
    classes = np.full((n, k), -1, dtype=np.int32)
    probs = np.zeros((n, k), dtype=np.float32)
    weights = np.zeros(n, dtype=np.int64)
    ids: list[pa.Array] = []
    at = 0
    for s, f in zip(shards, files):
        check_metadata(read_metadata(s), ref, str(s), "the selection's first shard")
        t = f.read(columns=["image_id", "topk_classes", "topk_probs", "weight"])
        m = t.num_rows
        if m:
            c, p = topk_arrays(t)
            if c.shape[1] > k:
                raise UserError(f"{s}: rows store {c.shape[1]} classes, more than its metadata's topk={k}")
            classes[at:at + m, : c.shape[1]], probs[at:at + m, : p.shape[1]] = c, p
            weights[at:at + m] = t["weight"].to_numpy()
            ids.extend(t["image_id"].chunks)
        at += m
        del t
    return pa.chunked_array(ids, type=SCHEMA.field("image_id").type), classes, probs, weights


def topk_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The ``topk_classes``/``topk_probs`` list columns as ``(N, k)`` int32 / float32 arrays, straight from
    Arrow's flat value buffers (rows shorter than the longest are padded with class -1, probability 0)."""
    import pyarrow.compute as pc

    cls = table["topk_classes"].combine_chunks()
    prb = table["topk_probs"].combine_chunks()
    n = len(cls)
    lengths = pc.list_value_length(cls).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
    k = int(lengths.max()) if n else 0
    flat_c = pc.list_flatten(cls).to_numpy().astype(np.int32)
    flat_p = pc.list_flatten(prb).to_numpy().astype(np.float32)
    if n and (lengths == k).all():
        return flat_c.reshape(n, k), flat_p.reshape(n, k)
    out_c = np.full((n, k), -1, dtype=np.int32)
    out_p = np.zeros((n, k), dtype=np.float32)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(flat_c)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out_c[rows, cols] = flat_c
    out_p[rows, cols] = flat_p
    return out_c, out_p
