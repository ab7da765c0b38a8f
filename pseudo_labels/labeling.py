"""The labeling job: teacher(s) label every unlabeled image once, on Ray Data, into Parquet shards.

How the work is cut, and why each image is labeled exactly once
----------------------------------------------------------------
The source's index space ``0 .. N-1`` is cut into fixed chunks of ``chunk_size`` indices; chunk ``c``
is written as ``part-{c:05d}.parquet``. A shard holds the labels of its chunk's readable images and,
in its file metadata, the ``(image_id, reason)`` of the unreadable ones, so one atomic file is the
whole outcome of one chunk: either it exists and accounts for every index of the chunk, or it does
not exist and the chunk is redone. A ``_job.json`` written before any shard pins the number of
images, the chunk size, a hash of every image id and the label metadata, so a resumed run refuses a
changed source, teacher or chunk size instead of mixing shards from two different cuts.

Shards are written by the driver, not by the actors: the driver iterates the dataset's output,
gathers rows per chunk, and writes a chunk only when the indices it received are exactly the
chunk's indices (a missing or repeated index is an error, never a silent duplicate). This keeps
"each image exactly once" a checked property in one place, and it means only the driver needs to
reach the output folder; workers need the images but not the run folder. The driver-side data is
small (labels only, about 60 bytes an image with top-k); the pixels stay on the workers.

The teachers travel to the actors inside the constructor arguments (spec and weights, loaded once
on the driver with :func:`~noisystudent.checkpoint.load_checkpoint`), so workers need no access to the
checkpoint files either. Each actor builds its models once, in ``__init__``.

Ray Data logs "has constructor arguments in the object store and max_restarts > 0" for every actor
pool it starts (its own map-transformer reference, ray-project/ray#53727); it does not come from the
arguments here and does not affect results.

A re-run first removes ``.tmp-*`` leftovers of a killed run, keeps every finished shard untouched and
labels only the missing chunks. ``_SUCCESS`` is written last, after ``rejected.csv`` and
``summary.json``; with it present a re-run returns the existing summary (after checking that the
folder holds labels of the same images, teachers, temperature and top-k), and ``force=True`` deletes
the folder's labeling files and starts again.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from noisystudent.checkpoint import Checkpoint, load_checkpoint
from noisystudent.errors import ImageDecodeError, UserError
from noisystudent.io import atomic_path, clean_temporaries, read_json, write_json, write_text

from .schema import COLUMNS, SCHEMA, LabelMetadata, effective_topk, probs_to_table
from .store import (
    SHARD_GLOB,
    SUCCESS,
    check_metadata,
    is_complete,
    read_labels,
    read_metadata,
    read_rejected,
    shard_name,
    write_shard,
)

DEFAULT_CHUNK_SIZE = 4096
JOB_FILE = "_job.json"
SUMMARY_FILE = "summary.json"
REJECTED_FILE = "rejected.csv"
CONFIDENCE_BINS = 20

# What the actors return: the label columns (nullable, rejected rows carry placeholders), the source
# index the row belongs to, and why the image was rejected ("" for labeled rows).
_NULLABLE_LABELS = pa.schema([f.with_nullable(True) for f in SCHEMA])
_OUT_SCHEMA = pa.schema(
    [pa.field("index", pa.int64())] + list(_NULLABLE_LABELS) + [pa.field("reject_reason", pa.string())]
)


# --------------------------------------------------------------------------------------------------
# the actor


class Labeler:
    """Ray Data callable class: decodes a batch of source indices and labels it with the teacher(s).

    Several teachers form an ensemble: each gives softmax(logits / T) and the probabilities are
    averaged. Images that cannot be decoded come back as rows with a ``reject_reason`` instead of
    failing the block.
    """

    def __init__(
        self,
        source: Any,
        teachers: Sequence[Checkpoint],
        temperature: float = 1.0,
        topk: Optional[int] = None,
        device: str = "cpu",
        decode_threads: int = 1,
        torch_threads: Optional[int] = None,
        kill_once_marker: Optional[str] = None,
    ) -> None:
        import torch

        from noisystudent.transforms import create_transform

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("labeling actor was given a GPU but torch sees no CUDA device")
        self.device = torch.device(device)
        self.half = self.device.type == "cuda"
        self.source = source
        self.temperature = float(temperature)
        self.num_classes = teachers[0].spec.num_classes
        self.topk = effective_topk(topk, self.num_classes)
        self.teacher_id = teacher_column(teachers)
        self.models = []
        self.transforms: dict[tuple, Any] = {}
        for ckpt in teachers:
            spec = ckpt.spec
            model = ckpt.build_model(self.device)
            if self.half:
                model = model.half().to(memory_format=torch.channels_last)
            key = (spec.image_size, spec.in_chans, tuple(spec.mean), tuple(spec.std))
            if key not in self.transforms:
                self.transforms[key] = create_transform(spec.image_size, spec.in_chans, list(spec.mean), list(spec.std), noise=None)
            self.models.append((key, model))
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None
        self.kill_once_marker = kill_once_marker

    def _load(self, i: int) -> tuple[Optional[dict[tuple, Any]], str]:
        """Decode image ``i`` and apply each teacher input transform; or None and why it failed."""
        try:
            img = self.source.load(int(i))
        except ImageDecodeError as exc:
            return None, exc.reason or "unreadable"
        except (OSError, ValueError) as exc:  # a source that does not wrap its decoder's errors
            return None, f"{type(exc).__name__}: {exc}"
        return {key: tf(img) for key, tf in self.transforms.items()}, ""

    def _maybe_die(self) -> None:
        """Fault injection for tests: the first actor to get here exits hard, as an OOM-killed process would."""
        try:
            fd = os.open(self.kill_once_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        if self.kill_once_marker:
            self._maybe_die()

        indices = np.asarray(batch["index"], dtype=np.int64)
        ids = [self.source.image_id(int(i)) for i in indices]
        # Pillow and the resize release the GIL, so threads decode in parallel within one actor.
        loaded = list(self.pool.map(self._load, indices)) if self.pool else [self._load(i) for i in indices]
        ok = [k for k, (x, _) in enumerate(loaded) if x is not None]
        bad = [k for k, (x, _) in enumerate(loaded) if x is None]
        parts = []
        if ok:
            inputs = {key: torch.stack([loaded[k][0][key] for k in ok]) for key in self.transforms}
            probs = self._probs(inputs)
            t = probs_to_table([ids[k] for k in ok], probs, self.topk, self.teacher_id)
            t = t.cast(_NULLABLE_LABELS)
            t = t.add_column(0, "index", pa.array(indices[ok], type=pa.int64()))
            parts.append(t.append_column("reject_reason", pa.array([""] * len(ok), type=pa.string())))
        if bad:
            n = len(bad)
            cols = {
                "index": pa.array(indices[bad], type=pa.int64()),
                "image_id": pa.array([ids[k] for k in bad], type=pa.string()),
                "reject_reason": pa.array([loaded[k][1] for k in bad], type=pa.string()),
            }
            parts.append(pa.table([cols.get(f.name, pa.nulls(n, f.type)) for f in _OUT_SCHEMA], schema=_OUT_SCHEMA))
        return pa.concat_tables(parts) if parts else _OUT_SCHEMA.empty_table()

    def _probs(self, inputs: dict[tuple, Any]) -> np.ndarray:
        import torch

        total = None
        with torch.inference_mode():
            for key, model in self.models:
                x = inputs[key].to(self.device, non_blocking=True)
                if self.half:
                    x = x.half().contiguous(memory_format=torch.channels_last)
                p = torch.softmax(model(x).float() / self.temperature, dim=1)
                total = p if total is None else total + p
        return (total / len(self.models)).cpu().numpy()


def teacher_column(teachers: Sequence[Checkpoint]) -> str:
    """The ``teacher`` value of each row: the checkpoint id, or the ids joined by ``+`` for an ensemble."""
    return "+".join(t.checkpoint_id for t in teachers)


# --------------------------------------------------------------------------------------------------
# the driver


def load_teachers(checkpoints: Sequence[str | os.PathLike]) -> list[Checkpoint]:
    """Load every checkpoint; all must share one class list (an ensemble averages class by class)."""
    if not checkpoints:
        raise UserError("labeling needs at least one teacher checkpoint")
    teachers = [load_checkpoint(p) for p in checkpoints]
    first = teachers[0]
    for path, t in zip(checkpoints[1:], teachers[1:]):
        if list(t.spec.classes) != list(first.spec.classes):
            raise UserError(
                f"teacher {path} has classes {t.spec.classes[:5]}... ({t.spec.num_classes}), but teacher "
                f"{checkpoints[0]} has {first.spec.classes[:5]}... ({first.spec.num_classes}); "
                "an ensemble needs the same classes in the same order"
            )
    return teachers


def true_labels(source: Any, image_ids: Sequence[str], class_names: Sequence[str]) -> Optional[np.ndarray]:
    """The source's hidden labels for ``image_ids``, as indices into ``class_names`` (-1 unknown).

    For measuring pseudo-label quality only (the student must never see them). Returns None when the
    source has no hidden labels. When the source names its classes in another order they are mapped
    by name.
    """
    hidden = getattr(source, "hidden_labels", None)
    if hidden is None:
        return None
    hidden = np.asarray(hidden, dtype=np.int64)
    src_classes = getattr(source, "classes", None)
    if src_classes is not None and list(src_classes) != list(class_names):
        index = {name: k for k, name in enumerate(class_names)}
        mapping = np.asarray([index.get(name, -1) for name in src_classes] + [-1], dtype=np.int64)
        hidden = mapping[np.where(hidden < 0, len(src_classes), hidden)]
    pos = source.positions(image_ids)
    out = np.full(len(pos), -1, dtype=np.int64)
    out[pos >= 0] = hidden[pos[pos >= 0]]
    return out


def _ids_hash(source: Any) -> str:
    h = hashlib.sha256()
    for i in range(len(source)):
        h.update(source.image_id(i).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _check_args(temperature: float, topk: Optional[int], batch_size: int, num_actors: int,
                num_gpus_per_actor: float, num_cpus_per_actor: float, chunk_size: int) -> None:
    if not temperature > 0:
        raise UserError(f"pseudo_labels.temperature must be > 0, got {temperature}")
    if topk is not None and topk < 1:
        raise UserError(f"pseudo_labels.topk must be >= 1 or null, got {topk}")
    if batch_size < 1:
        raise UserError(f"pseudo_labels.batch_size must be >= 1, got {batch_size}")
    if num_actors < 1:
        raise UserError(f"pseudo_labels.num_actors must be >= 1, got {num_actors}")
    if num_gpus_per_actor < 0 or num_cpus_per_actor < 0:
        raise UserError("pseudo_labels.num_gpus_per_actor and num_cpus_per_actor must be >= 0")
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")


def _remove_outputs(out: Path) -> None:
    """Delete what a labeling job wrote (``_SUCCESS`` first, so a kill midway never looks complete)."""
    (out / SUCCESS).unlink(missing_ok=True)
    for name in (SUMMARY_FILE, REJECTED_FILE, JOB_FILE):
        (out / name).unlink(missing_ok=True)
    for shard in out.glob(SHARD_GLOB):
        shard.unlink()
    clean_temporaries(out)


def _check_job(out: Path, job: dict[str, Any], reuse: bool = False) -> None:
    """Write ``_job.json`` on a fresh folder; on an existing one refuse any difference that matters.

    Resuming needs everything equal, the chunk size included (chunks of another size would overlap).
    Reusing a finished folder (``reuse``) needs the same images, teachers, temperature and top-k.
    """
    path = out / JOB_FILE
    if not path.is_file():
        if reuse or any(out.glob(SHARD_GLOB)):
            raise UserError(f"{out} holds labels but no {JOB_FILE}; they were not written by this job (use force to relabel)")
        write_json(path, job)
        return
    old = read_json(path)
    old_meta = old.get("metadata", {})
    pairs = [(key, old.get(key), job[key]) for key in ("num_images", "image_ids_sha256", "chunk_size")]
    pairs += [(key, old_meta.get(key), value) for key, value in job["metadata"].items()]
    for key, was, now in pairs:
        if reuse and key == "chunk_size":
            continue
        if was != now:
            raise UserError(f"{out} holds labels of another job: {key} was {was!r}, now {now!r}; use force to relabel")


def _histogram(values: np.ndarray, bins: int = CONFIDENCE_BINS) -> dict[str, list]:
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.astype(int).tolist()}


class _ShardWriter:
    """Gathers actor output per chunk and writes a chunk's shard once all its indices have arrived."""

    def __init__(self, out: Path, chunks: Sequence[int], chunk_size: int, n: int, metadata: LabelMetadata, bar: Any):
        self.out, self.chunk_size, self.metadata, self.bar = out, chunk_size, metadata, bar
        self.expected = {c: min(chunk_size, n - c * chunk_size) for c in chunks}
        self.parts: dict[int, list[pa.Table]] = defaultdict(list)
        self.seen: dict[int, int] = defaultdict(int)
        self.written = 0
        self.rejected = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        idx = table["index"].to_numpy()
        chunk_of = idx // self.chunk_size
        for c in np.unique(chunk_of).tolist():
            if c not in self.expected:
                raise RuntimeError(f"labeling returned indices of chunk {c}, which was not requested")
            part = table.filter(pa.array(chunk_of == c))
            self.parts[c].append(part)
            self.seen[c] += part.num_rows
            if self.seen[c] > self.expected[c]:
                raise RuntimeError(f"chunk {c} received {self.seen[c]} rows for {self.expected[c]} images")
            if self.seen[c] == self.expected[c]:
                self._write(c)
        if self.bar is not None:
            self.bar.update(table.num_rows)

    def _write(self, c: int) -> None:
        table = pa.concat_tables(self.parts.pop(c))
        idx = table["index"].to_numpy()
        order = np.argsort(idx, kind="stable")
        start = c * self.chunk_size
        if not np.array_equal(idx[order], np.arange(start, start + self.expected[c])):
            raise RuntimeError(f"chunk {c} did not receive each of its indices exactly once")
        table = table.take(pa.array(order))
        reasons = table["reject_reason"].to_pylist()
        ok = pa.array([r == "" for r in reasons])
        # cast: back to the non-nullable schema, and undo any type widening on the way through Ray
        labeled = table.filter(ok).select(list(COLUMNS)).cast(SCHEMA).combine_chunks()
        ids = table["image_id"].to_pylist()
        rejected = [(i, r) for i, r in zip(ids, reasons) if r != ""]
        write_shard(self.out / shard_name(c), labeled, self.metadata, rejected)
        self.written += 1
        self.rejected += len(rejected)

    def finish(self) -> None:
        missing = sorted(c for c in self.expected if self.seen[c] != self.expected[c])
        if missing:
            raise RuntimeError(f"labeling ended with chunks {missing[:10]} incomplete")


def _run_ray(source: Any, teachers: list[Checkpoint], out: Path, chunks: list[int], *, n: int, chunk_size: int,
             metadata: LabelMetadata, temperature: float, topk: Optional[int], batch_size: int, num_actors: int,
             num_gpus_per_actor: float, num_cpus_per_actor: float, progress: bool,
             kill_once_marker: Optional[str] = None) -> int:
    import ray.data
    from tqdm.auto import tqdm

    # One input block per inference batch, never crossing a chunk boundary. The indices live in the
    # object store from the start (no read tasks), so every CPU can go to the actors.
    blocks = []
    for c in chunks:
        start, stop = c * chunk_size, min(n, (c + 1) * chunk_size)
        for s in range(start, stop, batch_size):
            blocks.append(pa.table({"index": np.arange(s, min(stop, s + batch_size), dtype=np.int64)}))
    total = sum(b.num_rows for b in blocks)

    ctx = ray.data.DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # one tqdm bar on the driver instead of one per operator
    bar = tqdm(total=total, desc="labeling", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        ds = ray.data.from_arrow(blocks).map_batches(
            Labeler,
            fn_constructor_kwargs={
                "source": source,
                "teachers": teachers,
                "temperature": temperature,
                "topk": topk,
                "device": "cuda" if num_gpus_per_actor > 0 else "cpu",
                "decode_threads": max(1, int(num_cpus_per_actor)),
                "torch_threads": max(1, int(num_cpus_per_actor)) if num_gpus_per_actor == 0 else None,
                "kill_once_marker": kill_once_marker,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
            udf_modifying_row_count=False,
            # A dead actor (OOM, preempted node) is restarted and its batch retried: Ray Data's actor pools
            # default to max_restarts=-1 and max_task_retries=-1 (passing them here is deprecated since
            # Ray 2.60). The driver's per-chunk index check keeps every image exactly once whatever is retried.
        )
        writer = _ShardWriter(out, chunks, chunk_size, n, metadata, bar)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
        writer.finish()
    finally:
        bar.close()
        ctx.enable_progress_bars = old_bars
    return total


def _finish(out: Path, source: Any, metadata: LabelMetadata, *, processed: int, seconds: float,
            chunk_size: int, teacher_paths: list[str]) -> dict[str, Any]:
    """Check the finished folder accounts for every image exactly once, then write the summary files."""
    df = read_labels(out, expected=metadata, columns=["image_id", "label", "confidence"])
    rejected = read_rejected(out)
    rejected_ids = [i for i, _ in rejected]
    n = len(source)
    all_ids = pd.Index(df["image_id"]).append(pd.Index(rejected_ids))
    if not all_ids.is_unique:
        dup = all_ids[all_ids.duplicated()][0]
        raise UserError(f"labels in {out} list image {dup!r} twice; relabel with force")
    if len(all_ids) != n:
        raise UserError(f"labels in {out} account for {len(all_ids)} images but the source has {n}; relabel with force")

    skipped = list(getattr(source, "skipped", []) or [])
    rows = rejected + [(i, f"skipped when the source was scanned: {r}") for i, r in skipped]
    with atomic_path(out / REJECTED_FILE) as tmp:
        pd.DataFrame(rows, columns=["image_id", "reason"]).to_csv(tmp, index=False)

    labels = df["label"].to_numpy()
    conf = df["confidence"].to_numpy(dtype=np.float64)
    summary: dict[str, Any] = {
        "images": n,
        "rows": int(len(df)),
        "rejected": len(rejected),
        "skipped_at_scan": len(skipped),
        "classes": metadata.class_names,
        "class_histogram": np.bincount(labels, minlength=metadata.num_classes).astype(int).tolist(),
        "confidence_histogram": _histogram(conf),
        "mean_confidence": float(conf.mean()) if len(conf) else None,
        "processed_this_run": processed,
        "seconds": round(seconds, 3),
        "throughput_images_per_s": round(processed / seconds, 2) if processed and seconds > 0 else None,
        "teachers": metadata.teachers,
        "teacher_paths": teacher_paths,
        "temperature": metadata.temperature,
        "topk": metadata.topk,
        "chunk_size": chunk_size,
        "shards": len(list(out.glob(SHARD_GLOB))),
        "schema_version": metadata.schema_version,
    }
    truth = true_labels(source, df["image_id"].tolist(), metadata.class_names)
    if truth is not None and (truth >= 0).any():
        known = truth >= 0
        summary["pseudo_label_accuracy"] = float((labels[known] == truth[known]).mean())
        summary["pseudo_label_accuracy_n"] = int(known.sum())
    write_json(out / SUMMARY_FILE, summary)
    write_text(out / SUCCESS, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    return summary


def label_images(
    source: Any,
    checkpoints: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    temperature: float = 1.0,
    topk: Optional[int] = None,
    batch_size: int = 512,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0.0,
    num_cpus_per_actor: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    force: bool = False,
    progress: bool = True,
    kill_once_marker: Optional[str] = None,
) -> dict[str, Any]:
    """Label every image of ``source`` with the teacher checkpoint(s) into ``out_dir``; return the summary.

    Idempotent and resumable (see the module docstring): a finished folder is returned as is unless
    ``force``; an unfinished one is completed, labeling only the chunks whose shard is missing. Uses
    the running Ray instance (Ray Data starts a local one if none is running).

    Raises :class:`UserError` for bad arguments, unreadable or mismatched checkpoints, and a folder
    that holds labels of another job (other teachers, temperature, top-k, source or chunk size).

    ``kill_once_marker`` is a fault-injection hook for tests: the first actor to create that file
    exits hard mid-job, so the retry path is exercised with a real dead process.
    """
    _check_args(temperature, topk, batch_size, num_actors, num_gpus_per_actor, num_cpus_per_actor, chunk_size)
    out = Path(out_dir)
    teachers = load_teachers(checkpoints)
    spec = teachers[0].spec
    metadata = LabelMetadata(
        class_names=list(spec.classes),
        num_classes=spec.num_classes,
        temperature=temperature,
        topk=topk,
        teachers=[t.checkpoint_id for t in teachers],
    )
    teacher_paths = [str(p) for p in checkpoints]

    n = len(source)
    if n == 0:
        raise UserError("the unlabeled source holds no images")
    job = {
        "num_images": n,
        "chunk_size": chunk_size,
        "image_ids_sha256": _ids_hash(source),
        "metadata": asdict(metadata),
    }
    if force and out.is_dir():
        _remove_outputs(out)
    elif is_complete(out) and (out / SUMMARY_FILE).is_file():
        _check_job(out, job, reuse=True)
        return read_json(out / SUMMARY_FILE)

    out.mkdir(parents=True, exist_ok=True)
    (out / SUCCESS).unlink(missing_ok=True)
    clean_temporaries(out)
    _check_job(out, job)

    n_chunks = math.ceil(n / chunk_size)
    existing = {p.name for p in out.glob(SHARD_GLOB)}
    stray = existing - {shard_name(c) for c in range(n_chunks)}
    if stray:
        raise UserError(f"{out} holds shards outside this job's {n_chunks} chunks: {sorted(stray)[:3]}; use force to relabel")
    for name in sorted(existing):
        check_metadata(read_metadata(out / name), metadata, str(out / name), "this job")
    todo = [c for c in range(n_chunks) if shard_name(c) not in existing]

    start = time.perf_counter()
    processed = 0
    if todo:
        processed = _run_ray(
            source, teachers, out, todo, n=n, chunk_size=chunk_size, metadata=metadata, temperature=temperature,
            topk=topk, batch_size=batch_size, num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor,
            num_cpus_per_actor=num_cpus_per_actor, progress=progress, kill_once_marker=kill_once_marker,
        )
    seconds = time.perf_counter() - start
    return _finish(out, source, metadata, processed=processed, seconds=seconds, chunk_size=chunk_size,
                   teacher_paths=teacher_paths)
