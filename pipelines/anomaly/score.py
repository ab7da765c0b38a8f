"""``noisystudent anomaly score``: every image of a folder scored once, on Ray Data, into Parquet shards.

The labeling job's exactly-once sharded writing (:mod:`pseudo_labels.sharded`) with another actor
(:class:`AnomalyScorer`): fixed chunks of the source's indices, an actor pool (GPU or CPU), the driver
writing each chunk as one atomic ``part-NNNNN.parquet`` once all its indices are in, corrupt images
listed (in the chunk's shard metadata, then ``rejected.csv``) and never fatal, a killed job resuming only
its missing chunks, and ``_job.json`` refusing to mix the scores of another detector, threshold or image set.

A shard's rows (:data:`SCORE_SCHEMA`): ``image_id``, ``score`` (the map's maximum), ``flagged``
(score > the detector's threshold) and, with maps on, ``map``: the anomaly map at the input size as
compressed float32 bytes (:func:`~noisystudent.anomaly.decode_map`; the shape is in the metadata).
``summary.json`` and ``rejected.csv`` follow, then ``_SUCCESS`` last. When the image ids show ground truth
(top-level folders ``good/`` and others, e.g. ``defect/`` or MVTec's defect types) the summary has the
image AUROC and the flag rates of each group.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from noisystudent.checkpoint import Checkpoint
from noisystudent.errors import UserError
from noisystudent.io import atomic_path, read_json, write_json, write_text
from pseudo_labels.job_folder import job_record, pending_chunks
from pseudo_labels.sharded import ImageBatchActor, check_run_args, run_chunks
from pseudo_labels.store import SHARD_GLOB, SUCCESS, list_shards, shard_name, shard_rejected, write_table_shard

from .train import DetectorRun, load_detector, load_run_config

SCHEMA_VERSION = 1
META_KEY = b"noisystudent.anomaly"
SUMMARY_FILE = "summary.json"
REJECTED_FILE = "rejected.csv"
GOOD = "good"

SCORE_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("flagged", pa.bool_(), nullable=False),
    pa.field("map", pa.binary(), nullable=True),
])


class AnomalyScorer(ImageBatchActor):
    """Ray Data callable class: decodes a batch of source indices, returns scores, flags and maps."""

    result_schema = SCORE_SCHEMA

    def __init__(self, source: Any, teacher: Checkpoint, student: Checkpoint, stages: Sequence[int], combine: str,
                 threshold: float, save_maps: bool = True, device: str = "cpu", decode_threads: int = 1,
                 torch_threads: Optional[int] = None, kill_once_marker: Optional[str] = None) -> None:
        import torch

        from noisystudent.anomaly import Detector

        super().__init__(source, decode_threads=decode_threads, torch_threads=torch_threads,
                         kill_once_marker=kill_once_marker, device=device)
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("scoring actor was given a GPU but torch sees no CUDA device")
        self.detector = Detector(teacher, student, stages, combine, threshold, device=device)
        s = self.detector.spec
        self.add_input(s.image_size, s.in_chans, list(s.mean), list(s.std), key="x")
        self.threshold = float(threshold)
        self.save_maps = save_maps

    def score(self, ids: list[str], inputs: dict[str, Any]) -> pa.Table:
        from noisystudent.anomaly import encode_map

        scores, maps = self.detector.score(inputs["x"])
        blobs = [encode_map(m) for m in maps] if self.save_maps else [None] * len(ids)
        return pa.table({"image_id": pa.array(ids, pa.string()), "score": pa.array(scores, pa.float32()),
                         "flagged": pa.array(scores > self.threshold, pa.bool_()), "map": pa.array(blobs, pa.binary())},
                        schema=SCORE_SCHEMA)


# --------------------------------------------------------------------------------------------------
# what to score


def images_source(paths: Sequence[str | os.PathLike], in_chans: int):
    """The images of ``paths``: one folder (ids relative to it, so ``good/``/``defect/`` subfolders show),
    or any mix of folders (recursive) and image files (ids relative to their common parent)."""
    from noisystudent.data.base import FileSource
    from noisystudent.data.folder import UnlabeledFolderSource, _is_image_name, scan_images

    items = [Path(p).expanduser() for p in paths]
    if not items:
        raise UserError("give at least one image or folder to score")
    for p in items:
        if not p.exists():
            raise UserError(f"image path not found: {p}")
    if len(items) == 1 and items[0].is_dir():
        return UnlabeledFolderSource(items[0], in_chans=in_chans)
    files: list[Path] = []
    for p in items:
        if p.is_dir():
            files += scan_images(p)
        elif _is_image_name(p.name):
            files.append(p)
        else:
            raise UserError(f"not an image file (by its extension): {p}")
    files = sorted({f.resolve() for f in files})
    if not files:
        raise UserError(f"no images in {', '.join(map(str, items))}")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return FileSource(root, [f.relative_to(root).as_posix() for f in files], [str(f) for f in files], in_chans)


def ground_truth(image_ids: Sequence[str]) -> Optional[tuple[np.ndarray, list[str]]]:
    """``(is_anomalous, group)`` from the ids' top-level folders when they include ``good`` and at least one
    other folder (every image in some folder); None otherwise."""
    groups = [i.split("/", 1)[0] if "/" in i else "" for i in image_ids]
    names = set(groups)
    if GOOD not in names or len(names - {GOOD}) < 1 or "" in names:
        return None
    return np.asarray([g != GOOD for g in groups]), groups


# --------------------------------------------------------------------------------------------------
# the job


def _shard_meta(path: Path) -> dict:
    kv = dict(pq.read_schema(path).metadata or {})
    if META_KEY not in kv:
        raise UserError(f"{path} is not an anomaly-score shard (no '{META_KEY.decode()}' metadata)")
    return json.loads(kv[META_KEY])


def _write_chunk(out: Path, metadata: dict):
    kv = {META_KEY: json.dumps(metadata, sort_keys=True).encode("utf-8")}

    def write(c: int, rows: pa.Table, rejected: list[tuple[str, str]]) -> None:
        table = rows.cast(SCORE_SCHEMA).combine_chunks()
        if metadata.get("map_shape") is None:
            table = table.drop_columns(["map"])
        write_table_shard(out / shard_name(c), table, kv, rejected)

    return write


def read_scores(out_dir: str | os.PathLike, maps: bool = False) -> pd.DataFrame:
    """Every scored row of a score folder (shard order); ``maps`` adds the ``map`` column (bytes)."""
    shards = list_shards(out_dir)
    if not shards:
        raise UserError(f"no {SHARD_GLOB} shards in {out_dir}")
    cols = ["image_id", "score", "flagged"] + (["map"] if maps else [])
    frames = []
    for s in shards:
        _shard_meta(s)
        frames.append(pq.read_table(s, columns=cols).replace_schema_metadata(None).to_pandas())
    return pd.concat(frames, ignore_index=True)


def read_score_metadata(out_dir: str | os.PathLike) -> dict:
    shards = list_shards(out_dir)
    if not shards:
        raise UserError(f"no {SHARD_GLOB} shards in {out_dir}")
    return _shard_meta(shards[0])


def _histogram(scores: np.ndarray, bins: int = 30) -> dict:
    if len(scores) == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(scores, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": counts.astype(int).tolist()}


def _finish(out: Path, source: Any, record: dict, metadata: dict, *, processed: int, seconds: float,
            chunk_size: int, inputs: list[str], run_dir: Path) -> dict:
    """Check the folder accounts for every image exactly once, then ``rejected.csv``, ``summary.json``, ``_SUCCESS``."""
    from noisystudent.anomaly import auroc, tpr_at

    df = read_scores(out)
    rejected = [r for s in list_shards(out) for r in shard_rejected(s)]
    n = len(source)
    all_ids = pd.Index(df["image_id"]).append(pd.Index([i for i, _ in rejected]))
    if not all_ids.is_unique:
        raise UserError(f"scores in {out} list image {all_ids[all_ids.duplicated()][0]!r} twice; rescore with --force")
    if len(all_ids) != n:
        raise UserError(f"scores in {out} account for {len(all_ids)} images but there are {n}; rescore with --force")
    skipped = list(getattr(source, "skipped", []) or [])
    rows = rejected + [(i, f"skipped when the folder was scanned: {r}") for i, r in skipped]
    with atomic_path(out / REJECTED_FILE) as tmp:
        pd.DataFrame(rows, columns=["image_id", "reason"]).to_csv(tmp, index=False)

    scores = df["score"].to_numpy(dtype=np.float64)
    summary: dict[str, Any] = {
        "images": n,
        "scored": int(len(df)),
        "rejected": len(rejected),
        "skipped_at_scan": len(skipped),
        "flagged": int(df["flagged"].sum()),
        "threshold": metadata["threshold"],
        "threshold_fpr_target": record.get("threshold_fpr_target"),
        "detector_id": metadata["detector_id"],
        "run_dir": str(run_dir.resolve()),
        "inputs": inputs,
        "in_chans": record.get("in_chans"),
        "maps": metadata.get("map_shape") is not None,
        "map_shape": metadata.get("map_shape"),
        "score_histogram": _histogram(scores),
        "processed_this_run": processed,
        "seconds": round(seconds, 3),
        "throughput_images_per_s": round(processed / seconds, 2) if processed and seconds > 0 else None,
        "chunk_size": chunk_size,
        "shards": len(list(out.glob(SHARD_GLOB))),
        "schema_version": SCHEMA_VERSION,
    }
    truth = ground_truth(df["image_id"].tolist())
    if truth is not None:
        y, groups = truth
        summary["ground_truth"] = "folders: good/ normal, every other top-level folder anomalous"
        summary["image_auroc"] = auroc(y, scores)
        summary.update({f"flag_rate_{k}": v for k, v in tpr_at(y, scores, metadata["threshold"]).items()})
        per = {}
        for g in sorted(set(groups) - {GOOD}):
            keep = np.asarray([x in (g, GOOD) for x in groups])
            per[g] = auroc(y[keep], scores[keep])
        summary["image_auroc_per_group"] = per
    write_json(out / SUMMARY_FILE, summary)
    write_text(out / SUCCESS, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    return summary


def _check_shard(path: Path, metadata: dict) -> None:
    """A shard an earlier job left must hold this job's kind of scores (detector, threshold, maps, ...)."""
    got = _shard_meta(path)
    for key, value in metadata.items():
        if got.get(key) != value:
            raise UserError(f"score shard {path}: {key} is {got.get(key)!r}, this job has {value!r}; use --force to rescore")


def score_images(run_dir: str | os.PathLike, source: Any, out_dir: str | os.PathLike, *,
                 batch_size: Optional[int] = None, num_actors: Optional[int] = None,
                 num_gpus_per_actor: Optional[float] = None, num_cpus_per_actor: Optional[float] = None,
                 chunk_size: Optional[int] = None, save_maps: Optional[bool] = None, force: bool = False,
                 progress: bool = True, inputs: Optional[list[str]] = None, ray_address: Optional[str] = None,
                 kill_once_marker: Optional[str] = None) -> dict:
    """Score every image of ``source`` with the detector of ``run_dir`` into ``out_dir``; return the summary.

    Settings left None come from the run's ``score`` config section. Idempotent and resumable like
    labeling: a finished folder is returned as is unless ``force``; an unfinished one is completed,
    scoring only the chunks whose shard is missing. Raises :class:`UserError` for a folder that holds
    the scores of another detector, threshold, image set or chunk size, or a missing or changed detector.
    ``kill_once_marker``: fault injection for tests (the first actor to create that file exits hard).
    """
    run = DetectorRun(run_dir)
    cfg = load_run_config(run).score
    record, teacher, student = load_detector(run.root)
    batch_size = cfg.batch_size if batch_size is None else batch_size
    num_actors = cfg.num_actors if num_actors is None else num_actors
    num_gpus_per_actor = cfg.num_gpus_per_actor if num_gpus_per_actor is None else num_gpus_per_actor
    num_cpus_per_actor = cfg.num_cpus_per_actor if num_cpus_per_actor is None else num_cpus_per_actor
    chunk_size = cfg.chunk_size if chunk_size is None else chunk_size
    save_maps = cfg.save_maps if save_maps is None else save_maps
    check_run_args("score", batch_size, num_actors, num_gpus_per_actor, num_cpus_per_actor, chunk_size)
    if len(source) == 0:
        raise UserError("there are no images to score")
    if source.in_chans != teacher.spec.in_chans:
        raise UserError(f"the images are read with {source.in_chans} channel(s) but the detector takes {teacher.spec.in_chans}")

    out = Path(out_dir)
    size = teacher.spec.image_size
    metadata = {"schema_version": SCHEMA_VERSION, "detector_id": record["detector_id"], "threshold": record["threshold"],
                "stages": record["stages"], "combine": record["combine"], "image_size": size,
                "map_shape": [size, size] if save_maps else None, "map_encoding": "float32-byteshuffle-zlib"}
    job = job_record(source, chunk_size, metadata)
    todo = pending_chunks(out, job, force=force, outputs=(SUMMARY_FILE, REJECTED_FILE),
                          check_shard=functools.partial(_check_shard, metadata=metadata), what="scores", redo="rescore")
    if todo is None:
        return read_json(out / SUMMARY_FILE)

    from pipelines.ray_runtime import init_ray

    init_ray(ray_address, quiet=not progress)
    start = time.perf_counter()
    processed = run_chunks(
        source, todo, chunk_size=chunk_size, actor=AnomalyScorer,
        actor_kwargs={"teacher": teacher, "student": student, "stages": record["stages"], "combine": record["combine"],
                      "threshold": record["threshold"], "save_maps": save_maps},
        write_chunk=_write_chunk(out, metadata), batch_size=batch_size, num_actors=num_actors,
        num_gpus_per_actor=num_gpus_per_actor, num_cpus_per_actor=num_cpus_per_actor, progress=progress,
        desc="scoring", kill_once_marker=kill_once_marker,
    )
    return _finish(out, source, record, metadata, processed=processed, seconds=time.perf_counter() - start,
                   chunk_size=chunk_size, inputs=list(inputs or [getattr(source, "root", "")]), run_dir=run.root)
