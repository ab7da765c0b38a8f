"""Writing and reading pseudo-label shards.

A labels folder holds ``part-NNNNN.parquet`` shards, each written atomically (temporary ``.tmp-``
name in the same folder, then renamed), and ``_SUCCESS`` written last when the set is complete.
Readers therefore trust every ``part-*.parquet`` they see and never see half a file. Every shard
carries :class:`~pseudo_labels.schema.LabelMetadata`; :func:`read_labels` refuses a shard whose
classes, temperature or schema version differ from the others (or from what the caller expects),
naming the shard and the field, because mixing them would silently scramble class indices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from noisystudent.errors import UserError
from noisystudent.io import atomic_path, clean_temporaries

from .schema import LabelMetadata

SUCCESS = "_SUCCESS"
SHARD_GLOB = "part-*.parquet"
SUMMARY = "summary.json"  # a finished selection's figures, written just before _SUCCESS
# Per-shard list of images that could not be read, kept in the shard itself so a shard is the one
# atomic record of its chunk: labels and rejects appear together or not at all.
REJECTED_KEY = b"noisystudent.rejected"

# Fields that must agree between shards (and with ``expected``): they fix what a label integer and a
# probability mean. ``topk`` and ``teachers`` may differ; each row says its own.
CHECKED_FIELDS: tuple[str, ...] = ("schema_version", "num_classes", "class_names", "temperature")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_shard(
    path: str | os.PathLike,
    table: pa.Table,
    metadata: LabelMetadata,
    rejected: Optional[Sequence[tuple[str, str]]] = None,
) -> Path:
    """Write ``table`` with ``metadata`` (and this chunk's rejected images) to ``path`` atomically."""
    return write_table_shard(path, table, metadata.to_parquet_metadata(), rejected)


def write_table_shard(
    path: str | os.PathLike,
    table: pa.Table,
    kv_metadata: dict[bytes, bytes],
    rejected: Optional[Sequence[tuple[str, str]]] = None,
) -> Path:
    """Write any shard atomically: ``table``, its key-value metadata and its chunk's rejected images
    (under :data:`REJECTED_KEY`, read back by :func:`shard_rejected`). Label shards and anomaly-score
    shards are both written here."""
    path = Path(path)
    kv = dict(table.schema.metadata or {})
    kv.update(kv_metadata)
    if rejected:
        kv[REJECTED_KEY] = json.dumps([[str(i), str(r)] for i, r in rejected]).encode("utf-8")
    table = table.replace_schema_metadata(kv)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def clear_shards(folder: str | os.PathLike) -> Path:
    """Start rewriting a shard folder: ``_SUCCESS`` goes first (no reader trusts the folder from then on),
    then leftover temporaries and the old shards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUCCESS).unlink(missing_ok=True)
    clean_temporaries(folder)
    for old in folder.glob(SHARD_GLOB):
        old.unlink()
    return folder


def list_shards(folder_or_file: str | os.PathLike) -> list[Path]:
    """The shard files of a folder (sorted; temporaries ignored), or ``[file]`` for one file."""
    path = Path(folder_or_file)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"pseudo-label path not found: {path}")
    return sorted(p for p in path.glob(SHARD_GLOB) if p.is_file())


def is_complete(folder: str | os.PathLike) -> bool:
    """True when the folder's writer finished (``_SUCCESS`` exists; it is written last)."""
    return (Path(folder) / SUCCESS).is_file()


def _shard_metadata(path: Path) -> tuple[LabelMetadata, dict[bytes, bytes]]:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"pseudo-label shard {path} is unreadable ({exc})") from None
    kv = dict(schema.metadata or {})
    return LabelMetadata.from_parquet_metadata(kv, str(path)), kv


def read_metadata(path: str | os.PathLike) -> LabelMetadata:
    """The metadata of a shard, or of the first shard of a folder."""
    shards = list_shards(path)
    if not shards:
        raise UserError(f"no {SHARD_GLOB} shards in {path}")
    return _shard_metadata(shards[0])[0]


def read_rejected(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(image_id, reason)`` recorded in a shard (or all shards of a folder), in shard order."""
    out: list[tuple[str, str]] = []
    for shard in list_shards(path):
        kv = _shard_metadata(shard)[1]
        if REJECTED_KEY in kv:
            out.extend((str(i), str(r)) for i, r in json.loads(kv[REJECTED_KEY]))
    return out


def shard_rejected(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(image_id, reason)`` of the rejected images recorded in one shard of any kind."""
    try:
        kv = dict(pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"shard {path} is unreadable ({exc})") from None
    return [(str(i), str(r)) for i, r in json.loads(kv[REJECTED_KEY])] if REJECTED_KEY in kv else []


def check_metadata(got: LabelMetadata, expected: LabelMetadata, where: str, against: str) -> None:
    """Raise :class:`UserError` naming ``where`` and the first field of :data:`CHECKED_FIELDS` that differs."""
    for name in CHECKED_FIELDS:
        a, b = getattr(got, name), getattr(expected, name)
        if a != b:
            if name == "class_names" and len(a) == len(b):
                diff = next(k for k in range(len(a)) if a[k] != b[k])
                detail = f"class {diff} is {a[diff]!r}, {against} has {b[diff]!r}"
            else:
                detail = f"{_short(a)}, {against} has {_short(b)}"
            raise UserError(f"pseudo-label shard {where}: {name} differs: {detail}")


def _short(value: object, limit: int = 8) -> str:
    if isinstance(value, list) and len(value) > limit:
        return repr(value[:limit])[:-1] + f", ... ({len(value)} in all)]"
    return repr(value)


def read_labels(
    folder_or_file: str | os.PathLike,
    expected: Optional[LabelMetadata] = None,
    columns: Optional[Iterable[str]] = None,
    require_complete: bool = False,
) -> pd.DataFrame:
    """Every row of every shard as one DataFrame (shard order, then row order).

    Each shard's metadata is checked against the first shard's and against ``expected``; the list
    columns come back as numpy arrays per row. ``require_complete`` refuses a folder without
    ``_SUCCESS`` (a labeling job that has not finished).
    """
    path = Path(folder_or_file)
    shards = list_shards(path)
    if not shards:
        raise UserError(f"no {SHARD_GLOB} shards in {path}")
    if require_complete and path.is_dir() and not is_complete(path):
        raise UserError(f"pseudo-labels in {path} are incomplete (no {SUCCESS}); finish or re-run the labeling step")
    reference = expected
    against = "expected"
    tables = []
    cols = list(columns) if columns is not None else None
    for shard in shards:
        meta, _ = _shard_metadata(shard)
        if reference is None:
            reference, against = meta, f"shard {shards[0].name}"
        else:
            check_metadata(meta, reference, str(shard), against)
        try:
            table = pq.read_table(shard, columns=cols)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"pseudo-label shard {shard}: cannot read columns {cols} ({exc})") from None
        tables.append(table.replace_schema_metadata(None))
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as exc:
        raise UserError(f"pseudo-label shards in {path} have incompatible columns ({exc})") from None
    return table.to_pandas()


def soft_targets(df: pd.DataFrame, num_classes: int) -> np.ndarray:
    """``(N, C)`` float32 probability rows rebuilt from ``topk_classes``/``topk_probs``.

    Each row is renormalised to sum to 1, which is exact when all classes were stored and spreads the
    missing mass over the stored k classes otherwise (the student's target ignores the tail).
    """
    n = len(df)
    out = np.zeros((n, num_classes), dtype=np.float32)
    if n == 0:
        return out
    classes = df["topk_classes"].to_numpy()
    probs = df["topk_probs"].to_numpy()
    lengths = np.fromiter((len(c) for c in classes), dtype=np.int64, count=n)
    flat_c = np.concatenate([np.asarray(c, dtype=np.int64) for c in classes])
    flat_p = np.concatenate([np.asarray(p, dtype=np.float32) for p in probs])
    if flat_c.size and (flat_c.min() < 0 or flat_c.max() >= num_classes):
        raise UserError(f"pseudo-labels name class {int(flat_c.max())} but num_classes={num_classes}")
    rows = np.repeat(np.arange(n), lengths)
    out[rows, flat_c] = flat_p
    total = out.sum(axis=1, keepdims=True)
    np.divide(out, total, out=out, where=total > 0)
    return out
