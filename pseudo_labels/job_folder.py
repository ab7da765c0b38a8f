"""The output folder of a sharded job: which partitions are left, and whether it holds this job's output.

A ``_job.json`` written before any shard pins the partitioning, the chunk size and the caller's metadata
(:func:`job_record`); :func:`pending_chunks` reuses a finished folder, removes a killed run's leftovers,
refuses a folder of another job and returns the partitions still without a shard. Files only: no Ray
(:mod:`pseudo_labels.sharded` runs the job).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from noisystudent.data.protocols import IdentifiedSource, PartitionedSource
from noisystudent.errors import UserError
from noisystudent.io import clean_temporaries, read_json, write_json

from .store import SHARD_GLOB, SUCCESS, shard_name

JOB_FILE = "_job.json"


def ids_sha256(source: Any) -> str:
    """A hash of every image id in index order: the identity of an in-memory source a job cuts into chunks
    (streamed, O(1) memory). A streaming source gives its own (a hash of its partition names)."""
    if isinstance(source, IdentifiedSource):
        return source.identity()
    h = hashlib.sha256()
    for i in range(len(source)):
        h.update(source.image_id(i).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def is_streaming(source: Any) -> bool:
    """A source cut into its own partitions (files), not an in-memory source cut into index chunks."""
    return isinstance(source, PartitionedSource)


def num_partitions(source: Any, chunk_size: int) -> int:
    return source.num_partitions if is_streaming(source) else math.ceil(len(source) / chunk_size)


def job_record(source: Any, chunk_size: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """What ``_job.json`` pins: the images (or the partition files), the cut and the caller's metadata."""
    streaming = is_streaming(source)
    return {"num_images": None if streaming else len(source), "chunk_size": None if streaming else chunk_size,
            "num_partitions": num_partitions(source, chunk_size), "image_ids_sha256": ids_sha256(source),
            "format": getattr(source, "format", "index_chunks"), "metadata": metadata}


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
    pairs = [(key, old.get(key), job[key]) for key in ("num_images", "image_ids_sha256", "chunk_size", "format")
             if key in old or key != "format"]
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

    n_chunks = job["num_partitions"]
    existing = {p.name for p in out.glob(SHARD_GLOB)}
    stray = existing - {shard_name(c) for c in range(n_chunks)}
    if stray:
        raise UserError(f"{out} holds shards outside this job's {n_chunks} chunks: {sorted(stray)[:3]}; use force to {redo}")
    for name in sorted(existing):
        check_shard(out / name)
    return [c for c in range(n_chunks) if shard_name(c) not in existing]
