"""The pipeline's selection: :func:`~pseudo_labels.select.select_pseudo_labels` streamed over the shards
of a labels folder into a selection folder, one shard in memory at a time.

The passes, each a helper: :func:`_count_labels` counts each class after the threshold (which fixes K);
:func:`_class_cutoffs` finds by radix select each class's cut-off confidence (and the ties at it);
:func:`_balanced` / :func:`_unbalanced` give the selected rows of each labels shard, which
:class:`_SelectionWriter` writes as the selected shard of the same index and tallies for the summary.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from noisystudent.errors import UserError
from noisystudent.io import write_json, write_text

from .schema import SCHEMA, SELECTED_SCHEMA, LabelMetadata
from .store import SUCCESS, SUMMARY, clear_shards, shard_name, write_shard

Truth = Callable[[list[str]], Optional[np.ndarray]]


def select_folder(
    labels_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    threshold: float = 0.0,
    per_class: Optional[int] = None,
    truth: Optional[Truth] = None,
    rows_per_shard: int = 1_000_000,
) -> dict[str, Any]:
    """:func:`~pseudo_labels.select.select_pseudo_labels` streamed over the shards of ``labels_dir`` into
    ``folder`` (written like :func:`~pseudo_labels.selection_io.write_selection`); return the summary (the
    reference's, plus ``max_confidence``).

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
    from .store import list_shards, read_metadata

    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"pseudo_labels.threshold must be in [0, 1], got {threshold}")
    if per_class is not None and int(per_class) < 0:
        raise UserError(f"pseudo_labels.per_class must be >= 0 or null, got {per_class}")
    labels_dir, folder = Path(labels_dir), Path(folder)
    meta = read_metadata(labels_dir)
    shards = list_shards(labels_dir)
    # compared in float32, the column's type, as the reference's numpy comparison does (NumPy 2: a Python
    # float is a weak scalar): float32(0.9) >= 0.9 is True there
    thr = np.float32(threshold)
    counts = _count_labels(shards, meta, thr, truth)
    k = None if per_class is None else (counts.after // meta.num_classes if int(per_class) == 0 else int(per_class))
    clear_shards(folder)
    filtered = functools.partial(_filtered, thr=thr)
    writer = _SelectionWriter(folder, meta, truth)
    for t, w in (_unbalanced(shards, filtered) if k is None else
                 _balanced(shards, filtered, counts.before, k, meta.num_classes)):
        writer.write(t, w)
    writer.finish()
    summary = _summary(counts, writer, threshold, per_class, k)
    write_json(folder / SUMMARY, summary)
    write_text(folder / SUCCESS, "")
    return summary


@dataclass
class _Counts:
    """Pass 1's figures: O(classes), never a row per image."""

    before: np.ndarray  # rows of each class after the threshold
    rows_in: int = 0
    after: int = 0
    top: float = -np.inf  # the largest confidence seen
    has_truth: bool = False
    acc: dict[str, list[int]] = field(default_factory=lambda: {"all": [0, 0], "after": [0, 0]})  # [correct, known]


def _count_labels(shards: Sequence[Path], meta: LabelMetadata, thr: np.float32, truth: Optional[Truth]) -> _Counts:
    """Pass 1: counts (O(classes)), accuracy counts, and the metadata check of every shard."""
    import pyarrow.parquet as pq

    from .store import check_metadata, read_metadata

    C = meta.num_classes
    n = _Counts(before=np.zeros(C, dtype=np.int64))
    for shard in shards:
        check_metadata(read_metadata(shard), meta, str(shard), f"shard {shards[0].name}")
        t = pq.read_table(shard, columns=["image_id", "label", "confidence"] if truth else ["label", "confidence"])
        lab = t["label"].to_numpy().astype(np.int64)
        conf = t["confidence"].to_numpy()
        if len(lab) and (lab.min() < 0 or lab.max() >= C):
            raise UserError(f"pseudo-label table has labels outside [0, {C}) for num_classes={C}")
        keep = conf >= thr
        n.rows_in += len(lab)
        n.after += int(keep.sum())
        n.before += np.bincount(lab[keep], minlength=C)[:C]
        n.top = max(n.top, float(conf.max())) if len(conf) else n.top
        tr = truth(t["image_id"].to_pylist()) if truth else None
        if tr is not None:
            n.has_truth = True
            known = tr >= 0
            ok = (lab == tr) & known
            n.acc["all"][0] += int(ok.sum())
            n.acc["all"][1] += int(known.sum())
            n.acc["after"][0] += int(ok[keep].sum())
            n.acc["after"][1] += int(known[keep].sum())
    return n


def _filtered(shard: Path, columns: list[str], thr: np.float32) -> pa.Table:
    """``columns`` of the rows of ``shard`` at or above the threshold (compared as float32)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(shard, columns=columns).replace_schema_metadata(None)
    return t.filter(pc.greater_equal(t["confidence"], pa.scalar(thr, pa.float32())))


class _SelectionWriter:
    """Writes selected shards (``part-00000`` on) and tallies what they hold for the summary."""

    def __init__(self, folder: Path, meta: LabelMetadata, truth: Optional[Truth]) -> None:
        C = meta.num_classes
        self.folder, self.meta, self.truth, self.C = folder, meta, truth, C
        self.after_counts = np.zeros(C, dtype=np.float64)
        self.unique_counts = np.zeros(C, dtype=np.int64)
        self.sel = {"plain": [0, 0], "weighted": [0, 0]}  # [correct, known]
        self.n_sel = self.n_weighted = 0
        self.written = 0

    def write(self, table: pa.Table, w: np.ndarray) -> None:
        self._tally(table, w)
        self._emit(table, w)

    def finish(self) -> None:
        """An empty selection is still one (empty) shard."""
        if self.written == 0:
            self._emit(SCHEMA.empty_table(), np.zeros(0, np.int64))

    def _tally(self, table: pa.Table, w: np.ndarray) -> None:
        C = self.C
        lab = table["label"].to_numpy().astype(np.int64)
        self.after_counts[:] += np.bincount(lab, weights=w, minlength=C)[:C]
        self.unique_counts[:] += np.bincount(lab, minlength=C)[:C]
        self.n_sel += len(lab)
        self.n_weighted += int(w.sum())
        tr = self.truth(table["image_id"].to_pylist()) if self.truth else None
        if tr is not None:
            known = tr >= 0
            ok = (lab == tr) & known
            self.sel["plain"][0] += int(ok.sum())
            self.sel["plain"][1] += int(known.sum())
            self.sel["weighted"][0] += int((ok * w).sum())
            self.sel["weighted"][1] += int((known * w).sum())

    def _emit(self, table: pa.Table, w: np.ndarray) -> None:
        out = table.select(SCHEMA.names).append_column("weight", pa.array(w.astype(np.int32), pa.int32()))
        write_shard(self.folder / shard_name(self.written), out.cast(SELECTED_SCHEMA), self.meta)
        self.written += 1


def _unbalanced(shards: Sequence[Path], filtered: Callable[[Path, list[str]], pa.Table]
                ) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Every row above the threshold, once, ranked within its shard."""
    from .select import ranked_table

    for shard in shards:
        t = ranked_table(filtered(shard, SCHEMA.names))
        yield t, np.ones(t.num_rows, dtype=np.int64)


def _class_cutoffs(shards: Sequence[Path], filtered: Callable[[Path, list[str]], pa.Table],
                   need: dict[str, np.ndarray], C: int) -> tuple[dict[str, Any], dict[str, pa.Array]]:
    """For each ``need`` (rows wanted of each class): the cut-off confidence per class by radix select over
    the shards, and the ids that win the ties at it."""
    from .select import ClassCutoffs, confidence_bits

    cuts = {name: ClassCutoffs(n, C) for name, n in need.items()}
    for level in range(ClassCutoffs.levels):
        for shard in shards:
            t = filtered(shard, ["label", "confidence"])
            lab, bits = t["label"].to_numpy(), confidence_bits(t["confidence"].to_numpy())
            for cut in cuts.values():
                cut.add(level, lab, bits)
    for cut in cuts.values():
        cut.finish()
    return cuts, {name: _tie_winners(shards, filtered, cut) for name, cut in cuts.items()}


def _chosen(cut: Any, winners: pa.Array, t: pa.Table, lab: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The rows above their class's cut-off, and those at it that won the tie."""
    import pyarrow.compute as pc

    v = cut.value[lab]
    at = bits.astype(np.uint64) == v
    won = pc.is_in(t["image_id"], value_set=winners).to_numpy(zero_copy_only=False) if at.any() else at
    return (bits.astype(np.uint64) > v) | (at & won)


def _balanced(shards: Sequence[Path], filtered: Callable[[Path, list[str]], pa.Table], before: np.ndarray, k: int,
              C: int) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """K rows a class: the K most confident of a class with more; every row of one with fewer, duplicated
    ``K // n`` times and the ``K % n`` most confident once more. Ranked within each shard."""
    import pyarrow.compute as pc

    from .select import confidence_bits

    # which rows of each class to keep, and which of a duplicated class get one copy more, as a cut-off
    # confidence per class (radix select over the shards) plus the ties at the cut-off broken by id
    dup = (before > 0) & (before < k)
    q, r = np.divmod(k, np.maximum(before, 1))
    take_all = before <= k
    cuts, winners = _class_cutoffs(shards, filtered, {"keep": np.where(take_all, 0, k), "plus": np.where(dup, r, 0)}, C)
    for shard in shards:
        t = filtered(shard, SCHEMA.names)
        lab = t["label"].to_numpy().astype(np.int64)
        bits = confidence_bits(t["confidence"].to_numpy())
        keep = take_all[lab] | _chosen(cuts["keep"], winners["keep"], t, lab, bits)
        w = np.where(dup[lab], q[lab] + _chosen(cuts["plus"], winners["plus"], t, lab, bits), 1).astype(np.int64)
        t = t.filter(pa.array(keep))
        w = w[keep]
        order = pc.sort_indices(t, sort_keys=[("label", "ascending"), ("confidence", "descending"),
                                              ("image_id", "ascending")])
        yield t.take(order), w[order.to_numpy()]


def _summary(n: _Counts, writer: _SelectionWriter, threshold: float, per_class: Optional[int],
             k: Optional[int]) -> dict[str, Any]:
    def ratio(pair: list[int]) -> Optional[float]:
        return pair[0] / pair[1] if pair[1] else None

    summary: dict[str, Any] = {
        "rows_in": int(n.rows_in),
        "threshold": float(threshold),
        "rows_after_threshold": int(n.after),
        "per_class_mode": None if per_class is None else ("auto" if int(per_class) == 0 else "fixed"),
        "K": k,
        "per_class_before": n.before.astype(int).tolist(),
        "per_class_after": writer.after_counts.astype(int).tolist(),
        "per_class_unique_after": writer.unique_counts.astype(int).tolist(),
        "rows_selected": int(writer.n_sel),
        "weighted_rows_selected": int(writer.n_weighted),
        "empty_classes": [c for c in range(writer.C) if n.before[c] == 0],
        "max_confidence": float(n.top) if n.rows_in else None,
    }
    if n.has_truth:
        summary["accuracy_all"] = ratio(n.acc["all"])
        summary["accuracy_after_threshold"] = ratio(n.acc["after"])
        summary["accuracy_selected"] = ratio(writer.sel["plain"])
        summary["accuracy_selected_weighted"] = ratio(writer.sel["weighted"])
    return summary


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
