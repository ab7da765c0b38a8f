"""Score every image of a source exactly once, on a Ray Data actor pool, into atomic Parquet shards.

The labeling job (:mod:`pseudo_labels.labeling`) and anomaly scoring (:mod:`pipelines.anomaly.score`) are
the same job with different actors: a callable class turns a batch of decoded images into rows, and this
module cuts the work, runs the pool, and writes and resumes the shards. What each caller adds is its
actor (a subclass of :class:`ImageBatchActor`), how one partition's rows become a shard
(``write_chunk``, run on the worker) and its summary (merged from per-shard summaries on the driver).

How the work is cut, and why each image is scored exactly once
--------------------------------------------------------------
The source is cut into *partitions* that are the same on every run: fixed chunks of ``chunk_size``
indices of an in-memory source (:class:`~pseudo_labels.chunks.IndexChunks`), or the files /
top-level folders of a streaming one (:class:`~noisystudent.data.streaming.StreamSource`). Partition
``p`` is written as ``part-{p:05d}.parquet``. A shard holds the rows of its partition's readable images
and, in its file metadata, the ``(image_id, reason)`` of the unreadable ones and the caller's per-shard
summary, so one atomic file is the whole outcome of one partition: either it exists and accounts for
every image of the partition, or it does not exist and the partition is redone.

The driver never sees an image id: it makes one Ray Data row per pending partition (O(partitions)
state), and the actor that gets a partition reads it (the source's own reader: index chunks, Parquet row
batches, a streamed tar), decodes, scores in batches of ``batch_size`` and writes the shard itself,
atomically (temporary name, then rename), returning only a count. A retried task (a dead actor is
restarted and its task retried) rewrites the same partition to the same name, so a retry can never
duplicate an image. A ``_job.json`` written before any shard pins the partitioning (number of images
and a hash of every id for an in-memory source; the partition list for a streaming one), the chunk size
and the caller's metadata (teachers, temperature; detector), so a resumed run refuses a changed source,
model or cut instead of mixing shards from two different cuts.

An in-memory source reaches the actors through Ray's object store once (``ray.put``), not inside every
actor's constructor arguments; a streaming source is a few partition names. Models travel inside the
constructor arguments (loaded once on the driver), so workers need no access to checkpoint files. The
workers need the output folder (a shared filesystem on a cluster).

Ray Data logs "has constructor arguments in the object store and max_restarts > 0" for every actor
pool it starts (its own map-transformer reference, ray-project/ray#53727); it does not come from the
arguments here and does not affect results.

A re-run first removes ``.tmp-*`` leftovers of a killed run, keeps every finished shard untouched and
scores only the missing partitions (:func:`~pseudo_labels.job_folder.pending_chunks`). The caller writes ``_SUCCESS`` last, after
its summary files; with it present a re-run reuses the folder (after checking that it holds the output
of the same images and models), and ``force`` deletes the job's files and starts again.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np
import pyarrow as pa

from noisystudent.data.hidden import remap
from noisystudent.data.protocols import AttachedOnWorker, HiddenLabelReader
from noisystudent.errors import UserError

# the folder's bookkeeping, imported from here by the jobs that run on this module
from .job_folder import (JOB_FILE, check_job, ids_sha256, is_streaming, job_record, num_partitions, pending_chunks,
                         remove_outputs)

__all__ = ["JOB_FILE", "REASON", "ImageBatchActor", "PartitionWorker", "WriteChunk", "check_job", "check_run_args",
           "ids_sha256", "is_streaming", "job_record", "num_partitions", "pending_chunks", "reader_for",
           "remove_outputs", "run_chunks"]

# Why an image was rejected, in the per-partition result of an actor.
REASON = "reject_reason"

#: ``write_chunk(partition, rows, rejected[, truth])``: write shard ``partition`` from its scored rows (the
#: actor's result columns, in read order) and its ``(image_id, reason)`` rejects, atomically; runs on the
#: worker. ``truth`` (only when the job has hidden labels) is the true class of each row, -1 unknown.
WriteChunk = Callable[..., None]


# --------------------------------------------------------------------------------------------------
# the actor


class ImageBatchActor:
    """Base of the scoring actors: decodes a batch of images, scores the readable ones.

    A subclass sets ``result_schema`` (its row columns, ``image_id`` among them), adds one
    :class:`~noisystudent.feed.EvalInput` per distinct model input with :meth:`add_input` (each image is
    fitted once per input, for models that take different inputs), and implements :meth:`score`.
    ``source`` is the partition reader (``decode(image_id, raw)``, and ``decode_batch(raws)`` when it
    holds its pixels in an array). Images that cannot be decoded are returned as ``(image_id, reason)``
    rejects instead of failing the partition.

    A batch goes through two halves (:mod:`noisystudent.feed` says why): :meth:`prepare` on the host
    (decode, resize, stack as uint8, pin; run one batch ahead in a thread by the partition worker) and
    :meth:`finish` where the model is (copy, normalise in ``input_dtype``, score).
    """

    result_schema: ClassVar[pa.Schema]
    #: what :meth:`score` gets: normalised batches of this dtype and memory format, on ``self.device``
    input_dtype: Any = None
    channels_last: bool = False

    def __init__(self, source: Any, decode_threads: int = 1, torch_threads: Optional[int] = None,
                 kill_once_marker: Optional[str] = None, device: str = "cpu", device_decode: bool = False) -> None:
        import torch

        from noisystudent.feed import limit_native_threads

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        limit_native_threads(decode_threads)
        self.source = source
        self.device = torch.device(device)
        self.inputs: dict[Any, Any] = {}
        self.transforms = self.inputs  # key -> EvalInput; also callable on one image (the eval transform)
        self.decode_threads = max(1, int(decode_threads))
        self.pool = ThreadPoolExecutor(self.decode_threads) if self.decode_threads > 1 else None
        self.kill_once_marker = kill_once_marker
        # JPEG bytes decoded by nvJPEG where the model is (feed.decode_jpeg_batch): only on a GPU, and only
        # for sources of encoded bytes (parquet_bytes, webdataset)
        self.device_decode = bool(device_decode) and self.device.type == "cuda" and \
            getattr(source, "format", None) in ("parquet_bytes", "webdataset")

    def add_input(self, image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float], key: Any = None) -> Any:
        """Register a model input (once per distinct input); returns its key (by default its own parameters)."""
        from noisystudent.feed import EvalInput

        inp = EvalInput(image_size, in_chans, mean, std)
        key = inp.key if key is None else key
        self.inputs.setdefault(key, inp)
        return key

    def score(self, ids: list[str], inputs: dict[Any, Any]) -> pa.Table:
        """Rows of ``result_schema`` for the readable images ``ids``; ``inputs[key]`` is their normalised batch."""
        raise NotImplementedError

    def prepare(self, ids: list[str], raws: list[Any]) -> tuple:
        """The host half: ``(ids, raws, {key: uint8 NHWC tensor or None}, positions read, rejects)``."""
        from noisystudent.feed import decode_fit, pin

        if self.device_decode:
            return ids, raws, None, None, None  # decoded in finish, on the device
        arrays, ok, rejected = decode_fit(self.source, ids, raws, self.inputs, self.pool, self.decode_threads)
        return ids, raws, pin(arrays, self.device), ok, rejected

    def finish(self, prepared: tuple) -> tuple[Optional[pa.Table], list[int], list[tuple[str, str]]]:
        """The device half: ``(rows of the readable images or None, their positions in the batch, rejects)``."""
        import torch

        ids, raws, host, ok, rejected = prepared
        if host is None:
            from noisystudent.feed import decode_jpeg_batch

            host, ok, rejected = decode_jpeg_batch(self.source, ids, raws, self.inputs, self.device)
        if not ok:
            return None, ok, rejected
        dtype = self.input_dtype or torch.float32
        inputs = {key: self.inputs[key].batch(x, self.device, dtype, self.channels_last) for key, x in host.items()}
        return self.score([ids[k] for k in ok], inputs), ok, rejected

    def process(self, ids: list[str], raws: list[Any]) -> tuple[Optional[pa.Table], list[int], list[tuple[str, str]]]:
        """Both halves on one batch: ``(rows of the readable images or None, their positions, rejects)``."""
        return self.finish(self.prepare(ids, raws))


class PartitionWorker:
    """The Ray Data callable class: for each partition of its input batch, read, score and write the shard.

    Returns one small row per partition (``partition``, ``images``, ``rejected``); the rows themselves
    never leave the worker."""

    def __init__(self, actor: type, actor_kwargs: dict[str, Any], reader: Any, write_chunk: WriteChunk,
                 batch_size: int, truth_map: Optional[np.ndarray] = None,
                 kill_once_marker: Optional[str] = None) -> None:
        if isinstance(reader, AttachedOnWorker):
            reader.attach()
        self.actor = actor(source=reader, **actor_kwargs)
        self.reader, self.write_chunk, self.batch_size = reader, write_chunk, batch_size
        self.truth_map = truth_map
        self.kill_once_marker = kill_once_marker
        self.columns = [f.name for f in actor.result_schema]

    def _maybe_die(self) -> None:
        """Fault injection for tests: the first actor to get here exits hard, as an OOM-killed process would."""
        try:
            fd = os.open(self.kill_once_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)

    def run_partition(self, p: int) -> tuple[int, int]:
        """Score and write partition ``p``; return ``(images read, rejected)``."""
        parts: list[pa.Table] = []
        truths: list[np.ndarray] = []
        rejected: list[tuple[str, str]] = []
        images = 0
        use_truth = self.truth_map is not None and isinstance(self.reader, HiddenLabelReader)
        from noisystudent.feed import prefetch

        # the next batch is read, decoded and pinned in a thread while the model scores this one
        for prepared in prefetch(self.reader.read_partition(p, self.batch_size), lambda b: self.actor.prepare(*b)):
            ids, raws = prepared[0], prepared[1]
            images += len(ids)
            rows, ok, bad = self.actor.finish(prepared)
            rejected.extend(bad)
            if rows is not None:
                parts.append(rows.select(self.columns))
                if use_truth:
                    hidden = self.reader.hidden([raws[k] for k in ok])
                    truths.append(np.full(len(ok), -1, np.int64) if hidden is None else remap(hidden, self.truth_map))
        schema = pa.schema([f.with_nullable(True) for f in self.actor.result_schema])
        table = pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table()
        if self.truth_map is not None:
            truth = np.concatenate(truths) if truths else np.full(table.num_rows, -1, np.int64)
            self.write_chunk(p, table, rejected, truth)
        else:
            self.write_chunk(p, table, rejected)
        return images, len(rejected)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = np.asarray(batch["partition"], dtype=np.int64)
        out = []
        for p in parts:
            out.append(self.run_partition(int(p)))
            if self.kill_once_marker:
                # after its shard is written, before the driver hears of it: the worst moment, since the
                # retried task must rewrite the same shard rather than add a second copy of its images
                self._maybe_die()
        return {"partition": parts, "images": np.asarray([o[0] for o in out], np.int64),
                "rejected": np.asarray([o[1] for o in out], np.int64)}


# --------------------------------------------------------------------------------------------------
# the driver


def reader_for(source: Any, chunk_size: int) -> Any:
    """The partition reader of ``source``: itself when it streams, else its index chunks (the source
    goes to Ray's object store once, when a Ray instance is running)."""
    if is_streaming(source):
        return source
    from .chunks import IndexChunks

    ref = None
    try:
        import ray

        if ray.is_initialized():
            ref = ray.put(source)
    except ImportError:  # pragma: no cover
        pass
    return IndexChunks(source, chunk_size, source_ref=ref)


def run_chunks(source: Any, chunks: list[int], *, chunk_size: int, actor: type, actor_kwargs: dict[str, Any],
               write_chunk: WriteChunk, batch_size: int, num_actors: int, num_gpus_per_actor: float,
               num_cpus_per_actor: float, progress: bool, desc: str = "scoring",
               kill_once_marker: Optional[str] = None, truth_map: Optional[np.ndarray] = None) -> int:
    """Score partitions ``chunks`` of ``source`` with a pool of ``actor`` (an :class:`ImageBatchActor`
    subclass), each worker writing its partitions' shards through ``write_chunk``; return the images read.

    The actor is built on each worker as ``actor(source=<reader>, device=..., decode_threads=...,
    torch_threads=..., kill_once_marker=None, **actor_kwargs)``: one GPU each when ``num_gpus_per_actor > 0``,
    else CPU actors with ``num_cpus_per_actor`` torch threads. Uses the running Ray instance (Ray Data
    starts one if none). ``truth_map`` (source class -> caller class, last entry for unknown) passes each
    row's hidden label to ``write_chunk``.
    """
    import ray.data
    from tqdm.auto import tqdm

    if not chunks:
        return 0
    reader = reader_for(source, chunk_size)
    ctx = ray.data.DataContext.get_current()
    old_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # one tqdm bar on the driver instead of one per operator
    bar = tqdm(total=len(chunks), desc=desc, unit="shard", disable=not progress, dynamic_ncols=True)
    try:
        # One row (and one block, so one task) per pending partition: the driver's whole state.
        ds = ray.data.from_items([{"partition": int(c)} for c in chunks], override_num_blocks=len(chunks))
        ds = ds.map_batches(
            PartitionWorker,
            fn_constructor_kwargs={
                "actor": actor,
                "actor_kwargs": {**_actor_defaults(num_gpus_per_actor, num_cpus_per_actor), **actor_kwargs},
                "reader": reader,
                "write_chunk": write_chunk,
                "batch_size": batch_size,
                "truth_map": truth_map,
                "kill_once_marker": kill_once_marker,
            },
            batch_size=1,
            batch_format="numpy",
            # one partition in flight per actor: with Ray Data's default (several), the actor that starts first
            # queues partitions the others would have taken, and a job's tail runs on one actor while the rest
            # idle (seen: both partitions of an 8,192-image job on one of 2 actors, 21 s instead of ~15).
            # A partition is seconds of work, so the gap between an actor's tasks costs nothing
            compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
            # A dead actor (OOM, preempted node) is restarted and its task retried: Ray Data's actor pools
            # default to max_restarts=-1 and max_task_retries=-1 (passing them here is deprecated since
            # Ray 2.60). A retried partition is rewritten whole, under the same name.
        )
        return _count_reported(ds, chunks, bar)
    finally:
        bar.close()
        ctx.enable_progress_bars = old_bars


def _actor_defaults(num_gpus_per_actor: float, num_cpus_per_actor: float) -> dict[str, Any]:
    """An actor's device and threads: one GPU each, or CPU actors with ``num_cpus_per_actor`` torch threads."""
    return {
        "device": "cuda" if num_gpus_per_actor > 0 else "cpu",
        "decode_threads": max(1, int(num_cpus_per_actor)),
        "torch_threads": max(1, int(num_cpus_per_actor)) if num_gpus_per_actor == 0 else None,
        "kill_once_marker": None,
    }


def _count_reported(ds: Any, chunks: list[int], bar: Any) -> int:
    """Drain the job's per-partition rows; return the images read. Each partition must be reported exactly
    once (a retried task rewrites its shard, never reports it twice), and every one of ``chunks``."""
    images = 0
    done: set[int] = set()
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for p, n in zip(out["partition"].tolist(), out["images"].tolist()):
            if p in done:
                raise RuntimeError(f"partition {p} was reported twice")
            done.add(p)
            images += int(n)
            bar.update(1)
            bar.set_postfix(images=images, refresh=False)
    missing = sorted(set(chunks) - done)
    if missing:
        raise RuntimeError(f"the job ended with partitions {missing[:10]} not written")
    return images


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
