"""Score every image of a source exactly once, on a Ray Data actor pool, into atomic Parquet shards.

The labeling job (:mod:`pseudo_labels.labeling`) and anomaly scoring (:mod:`pipelines.anomaly.score`) are
the same job with different actors: a callable class turns a batch of source indices into rows, and this
module cuts the work, runs the pool, and writes and resumes the shards. What each caller adds is its
actor (a subclass of :class:`ImageBatchActor`), how one chunk's rows become a shard (``write_chunk``) and
its summary.

How the work is cut, and why each image is scored exactly once
--------------------------------------------------------------
The source's index space ``0 .. N-1`` is cut into fixed chunks of ``chunk_size`` indices; chunk ``c``
is written as ``part-{c:05d}.parquet``. A shard holds the rows of its chunk's readable images and, in
its file metadata, the ``(image_id, reason)`` of the unreadable ones, so one atomic file is the whole
outcome of one chunk: either it exists and accounts for every index of the chunk, or it does not exist
and the chunk is redone. A ``_job.json`` written before any shard pins the number of images, the chunk
size, a hash of every image id and the caller's metadata (teachers, temperature; detector), so a resumed
run refuses a changed source, model or chunk size instead of mixing shards from two different cuts.

Shards are written by the driver, not by the actors: the driver iterates the dataset's output, gathers
rows per chunk, and writes a chunk only when the indices it received are exactly the chunk's indices (a
missing or repeated index is an error, never a silent duplicate). This keeps "each image exactly once"
a checked property in one place, and it means only the driver needs to reach the output folder; workers
need the images but not the output folder. The pixels stay on the workers; the driver sees the rows.

Models travel to the actors inside the constructor arguments (loaded once on the driver), so workers
need no access to checkpoint files either. Each actor builds its models once, in ``__init__``.

Ray Data logs "has constructor arguments in the object store and max_restarts > 0" for every actor
pool it starts (its own map-transformer reference, ray-project/ray#53727); it does not come from the
arguments here and does not affect results.

A re-run first removes ``.tmp-*`` leftovers of a killed run, keeps every finished shard untouched and
scores only the missing chunks (:func:`pending_chunks`). The caller writes ``_SUCCESS`` last, after its
summary files; with it present a re-run reuses the folder (after checking that it holds the output of
the same images and models), and ``force`` deletes the job's files and starts again.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np
import pyarrow as pa

from noisystudent.errors import ImageDecodeError, UserError
from noisystudent.io import clean_temporaries, read_json, write_json

from .store import SHARD_GLOB, SUCCESS, shard_name

JOB_FILE = "_job.json"

# Columns every actor output carries besides its own: the source index the row belongs to, and why the
# image was rejected ("" for scored rows).
INDEX, REASON = "index", "reject_reason"

#: ``write_chunk(chunk, rows, rejected)``: write shard ``chunk`` from its scored rows (the actor's result
#: columns, in index order) and its ``(image_id, reason)`` rejects, atomically.
WriteChunk = Callable[[int, pa.Table, list[tuple[str, str]]], None]


# --------------------------------------------------------------------------------------------------
# the actor


class ImageBatchActor:
    """Base of the Ray Data callable classes: decodes a batch of source indices, scores the readable images.

    A subclass sets ``result_schema`` (its row columns, ``image_id`` among them, all nullable) and
    ``self.transforms`` (key -> transform; each image is transformed once per key, for models that take
    different inputs), and implements :meth:`score`. Images that cannot be decoded come back as rows with
    a ``reject_reason`` (and nulls in the result columns) instead of failing the block.
    """

    result_schema: ClassVar[pa.Schema]

    def __init__(self, source: Any, decode_threads: int = 1, torch_threads: Optional[int] = None,
                 kill_once_marker: Optional[str] = None) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        self.source = source
        self.transforms: dict[Any, Any] = {}
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None
        self.kill_once_marker = kill_once_marker

    @classmethod
    def out_schema(cls) -> pa.Schema:
        return pa.schema([pa.field(INDEX, pa.int64())] + [f.with_nullable(True) for f in cls.result_schema]
                         + [pa.field(REASON, pa.string())])

    def score(self, ids: list[str], inputs: dict[Any, Any]) -> pa.Table:
        """Rows of ``result_schema`` for the readable images ``ids``; ``inputs[key]`` is their stacked tensor."""
        raise NotImplementedError

    def _load(self, i: int) -> tuple[Optional[dict[Any, Any]], str]:
        """Decode image ``i`` and apply each input transform; or None and why it failed."""
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
        schema = self.out_schema()
        nullable = pa.schema([f.with_nullable(True) for f in self.result_schema])
        indices = np.asarray(batch[INDEX], dtype=np.int64)
        ids = [self.source.image_id(int(i)) for i in indices]
        # Pillow and the resize release the GIL, so threads decode in parallel within one actor.
        loaded = list(self.pool.map(self._load, indices)) if self.pool else [self._load(i) for i in indices]
        ok = [k for k, (x, _) in enumerate(loaded) if x is not None]
        bad = [k for k, (x, _) in enumerate(loaded) if x is None]
        parts = []
        if ok:
            inputs = {key: torch.stack([loaded[k][0][key] for k in ok]) for key in self.transforms}
            t = self.score([ids[k] for k in ok], inputs).cast(nullable)
            t = t.add_column(0, INDEX, pa.array(indices[ok], type=pa.int64()))
            parts.append(t.append_column(REASON, pa.array([""] * len(ok), type=pa.string())))
        if bad:
            n = len(bad)
            cols = {
                INDEX: pa.array(indices[bad], type=pa.int64()),
                "image_id": pa.array([ids[k] for k in bad], type=pa.string()),
                REASON: pa.array([loaded[k][1] for k in bad], type=pa.string()),
            }
            parts.append(pa.table([cols.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema))
        return pa.concat_tables(parts) if parts else schema.empty_table()


# --------------------------------------------------------------------------------------------------
# the folder: which chunks are left, and whether it holds this job's output


def ids_sha256(source: Any) -> str:
    """A hash of every image id in index order: the identity of the source a job cuts into chunks."""
    h = hashlib.sha256()
    for i in range(len(source)):
        h.update(source.image_id(i).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def job_record(source: Any, chunk_size: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """What ``_job.json`` pins: the images, the cut and the caller's metadata (models, settings)."""
    return {"num_images": len(source), "chunk_size": chunk_size, "image_ids_sha256": ids_sha256(source),
            "metadata": metadata}


def remove_outputs(out: Path, extra: Sequence[str] = ()) -> None:
    """Delete what a job wrote (``_SUCCESS`` first, so a kill midway never looks complete)."""
    (out / SUCCESS).unlink(missing_ok=True)
    for name in (*extra, JOB_FILE):
        (out / name).unlink(missing_ok=True)
    for shard in out.glob(SHARD_GLOB):
        shard.unlink()
    clean_temporaries(out)


def check_job(out: Path, job: dict[str, Any], reuse: bool = False, what: str = "labels", redo: str = "relabel") -> None:
    """Write ``_job.json`` on a fresh folder; on an existing one refuse any difference that matters.

    Resuming needs everything equal, the chunk size included (chunks of another size would overlap).
    Reusing a finished folder (``reuse``) needs the same images and metadata. ``what`` and ``redo`` name
    the output in messages ("holds labels of another job ... use force to relabel").
    """
    path = out / JOB_FILE
    if not path.is_file():
        if reuse or any(out.glob(SHARD_GLOB)):
            raise UserError(f"{out} holds {what} but no {JOB_FILE}; they were not written by this job (use force to {redo})")
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
            raise UserError(f"{out} holds {what} of another job: {key} was {was!r}, now {now!r}; use force to {redo}")


def pending_chunks(out: Path, job: dict[str, Any], *, force: bool, outputs: Sequence[str],
                   check_shard: Callable[[Path], None], what: str = "labels", redo: str = "relabel") -> Optional[list[int]]:
    """Prepare ``out`` for ``job`` and return the chunks still to score; None when the folder is finished.

    ``force`` deletes the job's files first. A finished folder (``_SUCCESS`` and every file of ``outputs``
    present) is checked against ``job`` and reused (None). Otherwise leftovers of a killed run are removed,
    ``_job.json`` is written or checked, every existing shard goes through ``check_shard`` (the caller's
    metadata check), and the chunks without a shard are returned, in order.
    """
    if force and out.is_dir():
        remove_outputs(out, outputs)
    elif (out / SUCCESS).is_file() and all((out / name).is_file() for name in outputs):
        check_job(out, job, reuse=True, what=what, redo=redo)
        return None
    out.mkdir(parents=True, exist_ok=True)
    (out / SUCCESS).unlink(missing_ok=True)
    clean_temporaries(out)
    check_job(out, job, what=what, redo=redo)

    n_chunks = math.ceil(job["num_images"] / job["chunk_size"])
    existing = {p.name for p in out.glob(SHARD_GLOB)}
    stray = existing - {shard_name(c) for c in range(n_chunks)}
    if stray:
        raise UserError(f"{out} holds shards outside this job's {n_chunks} chunks: {sorted(stray)[:3]}; use force to {redo}")
    for name in sorted(existing):
        check_shard(out / name)
    return [c for c in range(n_chunks) if shard_name(c) not in existing]


# --------------------------------------------------------------------------------------------------
# the driver


class ChunkWriter:
    """Gathers actor output per chunk and writes a chunk's shard once all its indices have arrived."""

    def __init__(self, chunks: Sequence[int], chunk_size: int, n: int, write_chunk: WriteChunk,
                 result_columns: Sequence[str], bar: Any = None):
        self.chunk_size, self.write_chunk, self.bar = chunk_size, write_chunk, bar
        self.result_columns = list(result_columns)
        self.expected = {c: min(chunk_size, n - c * chunk_size) for c in chunks}
        self.parts: dict[int, list[pa.Table]] = defaultdict(list)
        self.seen: dict[int, int] = defaultdict(int)
        self.written = 0
        self.rejected = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        idx = table[INDEX].to_numpy()
        chunk_of = idx // self.chunk_size
        for c in np.unique(chunk_of).tolist():
            if c not in self.expected:
                raise RuntimeError(f"the job returned indices of chunk {c}, which was not requested")
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
        idx = table[INDEX].to_numpy()
        order = np.argsort(idx, kind="stable")
        start = c * self.chunk_size
        if not np.array_equal(idx[order], np.arange(start, start + self.expected[c])):
            raise RuntimeError(f"chunk {c} did not receive each of its indices exactly once")
        table = table.take(pa.array(order))
        reasons = table[REASON].to_pylist()
        ok = pa.array([r == "" for r in reasons])
        ids = table["image_id"].to_pylist()
        rejected = [(i, r) for i, r in zip(ids, reasons) if r != ""]
        self.write_chunk(c, table.filter(ok).select(self.result_columns), rejected)
        self.written += 1
        self.rejected += len(rejected)

    def finish(self) -> None:
        missing = sorted(c for c in self.expected if self.seen[c] != self.expected[c])
        if missing:
            raise RuntimeError(f"the job ended with chunks {missing[:10]} incomplete")


def run_chunks(source: Any, chunks: list[int], *, chunk_size: int, actor: type, actor_kwargs: dict[str, Any],
               write_chunk: WriteChunk, batch_size: int, num_actors: int, num_gpus_per_actor: float,
               num_cpus_per_actor: float, progress: bool, desc: str = "scoring",
               kill_once_marker: Optional[str] = None) -> int:
    """Score ``chunks`` of ``source`` with a pool of ``actor`` (an :class:`ImageBatchActor` subclass) and
    write each chunk through ``write_chunk`` once all its rows are in; return the images processed.

    The actor is built as ``actor(source=..., device=..., decode_threads=..., torch_threads=...,
    kill_once_marker=..., **actor_kwargs)``: one GPU each when ``num_gpus_per_actor > 0``, else CPU actors
    with ``num_cpus_per_actor`` torch threads. Uses the running Ray instance (Ray Data starts one if none).
    """
    import ray.data
    from tqdm.auto import tqdm

    n = len(source)
    # One input block per inference batch, never crossing a chunk boundary. The indices live in the
    # object store from the start (no read tasks), so every CPU can go to the actors.
    blocks = []
    for c in chunks:
        start, stop = c * chunk_size, min(n, (c + 1) * chunk_size)
        for s in range(start, stop, batch_size):
            blocks.append(pa.table({INDEX: np.arange(s, min(stop, s + batch_size), dtype=np.int64)}))
    total = sum(b.num_rows for b in blocks)
    if not blocks:
        return 0

    ctx = ray.data.DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # one tqdm bar on the driver instead of one per operator
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        ds = ray.data.from_arrow(blocks).map_batches(
            actor,
            fn_constructor_kwargs={
                "source": source,
                "device": "cuda" if num_gpus_per_actor > 0 else "cpu",
                "decode_threads": max(1, int(num_cpus_per_actor)),
                "torch_threads": max(1, int(num_cpus_per_actor)) if num_gpus_per_actor == 0 else None,
                "kill_once_marker": kill_once_marker,
                **actor_kwargs,
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
        writer = ChunkWriter(chunks, chunk_size, n, write_chunk, [f.name for f in actor.result_schema], bar)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
        writer.finish()
    finally:
        bar.close()
        ctx.enable_progress_bars = old_bars
    return total


def check_run_args(section: str, batch_size: int, num_actors: int, num_gpus_per_actor: float,
                   num_cpus_per_actor: float, chunk_size: int) -> None:
    """The pool settings every sharded job takes; errors name ``section.<field>``."""
    if batch_size < 1:
        raise UserError(f"{section}.batch_size must be >= 1, got {batch_size}")
    if num_actors < 1:
        raise UserError(f"{section}.num_actors must be >= 1, got {num_actors}")
    if num_gpus_per_actor < 0 or num_cpus_per_actor < 0:
        raise UserError(f"{section}.num_gpus_per_actor and num_cpus_per_actor must be >= 0")
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
