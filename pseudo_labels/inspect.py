"""A human-readable report of a pseudo-label folder or shard (``noisystudent labels inspect PATH``).

Meant for a terminal: counts, the Arrow schema, the metadata every shard carries, the class and
confidence histograms as text bars, and the first rows, so a user can tell at a glance whether a
teacher collapsed onto one class or is overconfident.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .schema import LabelMetadata
from .store import is_complete, list_shards, read_labels, read_metadata, read_rejected

BAR_WIDTH = 40


def _bar(count: float, biggest: float, width: int = BAR_WIDTH) -> str:
    return "#" * (int(round(width * count / biggest)) if biggest > 0 else 0)


def inspect_labels(path: str | os.PathLike, rows: int = 5, bins: int = 20) -> str:
    """The report as one string. Raises :class:`~noisystudent.errors.UserError` for a path without shards."""
    path = Path(path)
    meta = read_metadata(path)
    shards = list_shards(path)
    df = read_labels(path)
    rejected = read_rejected(path)
    lines = _header(path, meta, shards, df, rejected)
    lines += _class_histogram(df, meta)
    lines += _confidence_histogram(df["confidence"].to_numpy(dtype=np.float64), bins)
    if rows > 0 and len(df):
        lines += _first_rows(df, meta, rows)
    if rejected:
        lines.append("")
        lines.append(f"first {min(rows, len(rejected))} rejected:")
        lines.extend(f"  {i}: {reason}" for i, reason in rejected[:rows])
    return "\n".join(lines) + "\n"


def _header(path: Path, meta: LabelMetadata, shards: list[Path], df: pd.DataFrame, rejected: list) -> list[str]:
    """Counts, the metadata every shard carries, and the Arrow schema."""
    lines = [f"pseudo-labels: {path}"]
    if path.is_dir():
        lines.append(f"complete: {'yes' if is_complete(path) else 'no (no _SUCCESS)'}")
    lines.append(f"shards: {len(shards)}")
    lines.append(f"rows: {len(df)}")
    if "weight" in df.columns:
        lines.append(f"weighted rows: {int(df['weight'].sum())}")
    lines.append(f"rejected images: {len(rejected)}")
    lines.append("")
    lines.append("metadata:")
    lines.append(f"  schema_version: {meta.schema_version}")
    lines.append(f"  num_classes: {meta.num_classes}")
    lines.append(f"  temperature: {meta.temperature:g}")
    lines.append(f"  topk: {meta.topk}")
    weights = meta.teacher_weights or ([1 / len(meta.teachers)] * len(meta.teachers) if meta.teachers else [])
    lines.append("  teachers: " + (", ".join(f"{t} (weight {w:g})" for t, w in zip(meta.teachers, weights)) or "-"))
    lines.append("")
    lines.append("schema:")
    lines.extend("  " + line for line in str(pq.read_schema(shards[0]).remove_metadata()).splitlines())
    return lines


def _class_histogram(df: pd.DataFrame, meta: LabelMetadata) -> list[str]:
    """Rows per class as text bars (weighted rows in brackets for a selection)."""
    weighted = "weight" in df.columns
    labels = df["label"].to_numpy(dtype=np.int64)
    counts = np.bincount(labels, minlength=meta.num_classes)[: meta.num_classes]
    name_w = max((len(n) for n in meta.class_names), default=5)
    lines = ["", "class histogram:" + ("  (rows; weighted in brackets)" if weighted else "")]
    wcounts = np.bincount(labels, weights=df["weight"].to_numpy(), minlength=meta.num_classes) if weighted else None
    total = max(1, len(df))
    for c, name in enumerate(meta.class_names):
        extra = f" [{int(wcounts[c])}]" if wcounts is not None else ""
        lines.append(
            f"  {c:>3} {name:<{name_w}} {int(counts[c]):>8}{extra} {100 * counts[c] / total:5.1f}% {_bar(counts[c], counts.max())}"
        )
    return lines


def _confidence_histogram(conf: np.ndarray, bins: int) -> list[str]:
    hist, edges = np.histogram(conf, bins=bins, range=(0.0, 1.0))
    lines = ["", f"confidence histogram (mean {conf.mean():.4f}):" if len(conf) else "confidence histogram: no rows"]
    for k in range(bins):
        lines.append(f"  [{edges[k]:.2f}, {edges[k + 1]:.2f}{']' if k == bins - 1 else ')'} {int(hist[k]):>8} {_bar(hist[k], hist.max())}")
    return lines


def _first_rows(df: pd.DataFrame, meta: LabelMetadata, rows: int) -> list[str]:
    """The first ``rows`` rows: label and class name, confidence, entropy, weight, the three most probable classes."""
    weighted = "weight" in df.columns
    lines = ["", f"first {min(rows, len(df))} rows:"]
    for _, r in df.head(rows).iterrows():
        topk = ", ".join(
            f"{meta.class_names[int(c)] if 0 <= int(c) < meta.num_classes else c}:{float(p):.3f}"
            for c, p in list(zip(r["topk_classes"], r["topk_probs"]))[:3]
        )
        label = int(r["label"])
        name = meta.class_names[label] if 0 <= label < meta.num_classes else "?"
        w = f" weight={int(r['weight'])}" if weighted else ""
        lines.append(
            f"  {r['image_id']}: label={label} ({name}) confidence={float(r['confidence']):.4f} "
            f"entropy={float(r['entropy']):.4f}{w} top=[{topk}]"
        )
    return lines
