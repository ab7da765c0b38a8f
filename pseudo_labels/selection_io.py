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
from typing import Any, Callable, Optional, Sequence

import numpy as np

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


def select_folder(
    labels_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    threshold: float = 0.0,
    per_class: Optional[int] = None,
    truth: Optional[Callable[[list[str]], Optional[np.ndarray]]] = None,
    rows_per_shard: int = 1_000_000,
) -> dict[str, Any]:
    """:func:`~pseudo_labels.select.select_pseudo_labels` streamed over the shards of ``labels_dir`` into
    ``folder`` (written like :func:`write_selection`); return the summary (the reference's, plus
    ``max_confidence``).

    Memory is one shard plus O(classes x 4096) counts, never a row per image (nor per kept image): pass 1
    reads ``label`` and ``confidence`` (and the ids when ``truth`` gives hidden labels) to count each class
    after the threshold, which fixes K; three passes over the two columns find each class's K-th best
    confidence by radix select (:class:`~pseudo_labels.select.ClassCutoffs`), and the same for the
    most confident ``K % n`` rows of a class of ``n < K`` that get one copy more; one pass collects the rows
    *at* a cut-off to break ties by ``image_id``; the last writes selected shard ``p`` from labels shard
    ``p`` (rows ranked within the shard). Without balancing (``per_class=None``) every selected shard is one
    filtered labels shard. ``rows_per_shard`` is not used (kept for callers). ``truth(ids)`` gives the hidden label of each id (-1 unknown) for the
    accuracy figures, or None.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .select import ClassCutoffs, confidence_bits, ranked_table
    from .store import check_metadata, list_shards, read_metadata

    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"pseudo_labels.threshold must be in [0, 1], got {threshold}")
    if per_class is not None and int(per_class) < 0:
        raise UserError(f"pseudo_labels.per_class must be >= 0 or null, got {per_class}")
    labels_dir, folder = Path(labels_dir), Path(folder)
    meta = read_metadata(labels_dir)
    C = meta.num_classes
    shards = list_shards(labels_dir)
    # compared in float32, the column's type, as the reference's numpy comparison does (NumPy 2: a Python
    # float is a weak scalar): float32(0.9) >= 0.9 is True there
    thr = np.float32(threshold)

    # pass 1: counts (O(classes)), accuracy counts, and the metadata check of every shard
    rows_in = after = 0
    before = np.zeros(C, dtype=np.int64)
    acc = {"all": [0, 0], "after": [0, 0]}  # [correct, known]
    has_truth = False
    top = -np.inf
    for shard in shards:
        check_metadata(read_metadata(shard), meta, str(shard), f"shard {shards[0].name}")
        t = pq.read_table(shard, columns=["image_id", "label", "confidence"] if truth else ["label", "confidence"])
        lab = t["label"].to_numpy().astype(np.int64)
        conf = t["confidence"].to_numpy()
        if len(lab) and (lab.min() < 0 or lab.max() >= C):
            raise UserError(f"pseudo-label table has labels outside [0, {C}) for num_classes={C}")
        keep = conf >= thr
        rows_in += len(lab)
        after += int(keep.sum())
        before += np.bincount(lab[keep], minlength=C)[:C]
        top = max(top, float(conf.max())) if len(conf) else top
        tr = truth(t["image_id"].to_pylist()) if truth else None
        if tr is not None:
            has_truth = True
            known = tr >= 0
            ok = (lab == tr) & known
            acc["all"][0] += int(ok.sum())
            acc["all"][1] += int(known.sum())
            acc["after"][0] += int(ok[keep].sum())
            acc["after"][1] += int(known[keep].sum())

    k = None if per_class is None else (after // C if int(per_class) == 0 else int(per_class))

    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUCCESS).unlink(missing_ok=True)
    clean_temporaries(folder)
    for old in folder.glob(SHARD_GLOB):
        old.unlink()

    # pass 2: the selected rows
    after_counts = np.zeros(C, dtype=np.float64)
    unique_counts = np.zeros(C, dtype=np.int64)
    sel = {"plain": [0, 0], "weighted": [0, 0]}
    n_sel = n_weighted = 0
    written = 0

    def tally(table: pa.Table, w: np.ndarray) -> None:
        nonlocal n_sel, n_weighted
        lab = table["label"].to_numpy().astype(np.int64)
        after_counts[:] += np.bincount(lab, weights=w, minlength=C)[:C]
        unique_counts[:] += np.bincount(lab, minlength=C)[:C]
        n_sel += len(lab)
        n_weighted += int(w.sum())
        tr = truth(table["image_id"].to_pylist()) if truth else None
        if tr is not None:
            known = tr >= 0
            ok = (lab == tr) & known
            sel["plain"][0] += int(ok.sum())
            sel["plain"][1] += int(known.sum())
            sel["weighted"][0] += int((ok * w).sum())
            sel["weighted"][1] += int((known * w).sum())

    def emit(table: pa.Table, w: np.ndarray) -> None:
        nonlocal written
        out = table.select(SCHEMA.names).append_column("weight", pa.array(w.astype(np.int32), pa.int32()))
        write_shard(folder / shard_name(written), out.cast(SELECTED_SCHEMA), meta)
        written += 1

    def filtered(shard: Path, columns: list[str]) -> pa.Table:
        t = pq.read_table(shard, columns=columns).replace_schema_metadata(None)
        return t.filter(pc.greater_equal(t["confidence"], pa.scalar(thr, pa.float32())))

    if k is None:
        for shard in shards:
            t = ranked_table(filtered(shard, SCHEMA.names))
            w = np.ones(t.num_rows, dtype=np.int64)
            tally(t, w)
            emit(t, w)
    else:
        # which rows of each class to keep, and which of a duplicated class get one copy more, as a cut-off
        # confidence per class (radix select over the shards) plus the ties at the cut-off broken by id
        dup = (before > 0) & (before < k)
        q, r = np.divmod(k, np.maximum(before, 1))
        take_all = before <= k
        cuts = {"keep": ClassCutoffs(np.where(take_all, 0, k), C), "plus": ClassCutoffs(np.where(dup, r, 0), C)}
        for level in range(ClassCutoffs.levels):
            for shard in shards:
                t = filtered(shard, ["label", "confidence"])
                lab, bits = t["label"].to_numpy(), confidence_bits(t["confidence"].to_numpy())
                for cut in cuts.values():
                    cut.add(level, lab, bits)
        for cut in cuts.values():
            cut.finish()
        winners = {name: _tie_winners(shards, filtered, cut) for name, cut in cuts.items()}

        def chosen(name: str, t: pa.Table, lab: np.ndarray, bits: np.ndarray) -> np.ndarray:
            v = cuts[name].value[lab]
            at = bits.astype(np.uint64) == v
            won = pc.is_in(t["image_id"], value_set=winners[name]).to_numpy(zero_copy_only=False) if at.any() else at
            return (bits.astype(np.uint64) > v) | (at & won)

        for shard in shards:
            t = filtered(shard, SCHEMA.names)
            lab = t["label"].to_numpy().astype(np.int64)
            bits = confidence_bits(t["confidence"].to_numpy())
            keep = take_all[lab] | chosen("keep", t, lab, bits)
            w = np.where(dup[lab], q[lab] + chosen("plus", t, lab, bits), 1).astype(np.int64)
            t = t.filter(pa.array(keep))
            w = w[keep]
            order = pc.sort_indices(t, sort_keys=[("label", "ascending"), ("confidence", "descending"),
                                                  ("image_id", "ascending")])
            t, w = t.take(order), w[order.to_numpy()]
            tally(t, w)
            emit(t, w)
    if written == 0:
        emit(SCHEMA.empty_table(), np.zeros(0, np.int64))

    def ratio(pair: list[int]) -> Optional[float]:
        return pair[0] / pair[1] if pair[1] else None

    summary: dict[str, Any] = {
        "rows_in": int(rows_in),
        "threshold": float(threshold),
        "rows_after_threshold": int(after),
        "per_class_mode": None if per_class is None else ("auto" if int(per_class) == 0 else "fixed"),
        "K": k,
        "per_class_before": before.astype(int).tolist(),
        "per_class_after": after_counts.astype(int).tolist(),
        "per_class_unique_after": unique_counts.astype(int).tolist(),
        "rows_selected": int(n_sel),
        "weighted_rows_selected": int(n_weighted),
        "empty_classes": [c for c in range(C) if before[c] == 0],
        "max_confidence": float(top) if rows_in else None,
    }
    if has_truth:
        summary["accuracy_all"] = ratio(acc["all"])
        summary["accuracy_after_threshold"] = ratio(acc["after"])
        summary["accuracy_selected"] = ratio(sel["plain"])
        summary["accuracy_selected_weighted"] = ratio(sel["weighted"])
    write_json(folder / SUMMARY, summary)
    write_text(folder / SUCCESS, "")
    return summary


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


def _tie_winners(shards: Sequence[Path], filtered: Callable[[Path, list[str]], pa.Table], cut: Any) -> pa.Array:
    """The ids that win the ties at each class's cut-off confidence: of the rows at exactly that confidence,
    the ``cut.at_value[c]`` with the smallest ``image_id`` (the reference's tie-break). Only rows at a
    cut-off are held, one column of ids."""
    import pyarrow.compute as pc

    from .select import confidence_bits

    parts = []
    for shard in shards:
        t = filtered(shard, ["image_id", "label", "confidence"])
        lab = t["label"].to_numpy().astype(np.int64)
        at = confidence_bits(t["confidence"].to_numpy()).astype(np.uint64) == cut.value[lab]
        if at.any():
            parts.append(t.filter(pa.array(at)).select(["image_id", "label"]))
    if not parts:
        return pa.array([], pa.string())
    t = pa.concat_tables(parts)
    t = t.take(pc.sort_indices(t, sort_keys=[("label", "ascending"), ("image_id", "ascending")]))
    lab = t["label"].to_numpy().astype(np.int64)
    rank = np.arange(len(lab)) - np.searchsorted(lab, lab, side="left")
    return t["image_id"].filter(pa.array(rank < cut.at_value[lab])).combine_chunks()
