"""The labeling job: teacher(s) label every unlabeled image once, on Ray Data, into Parquet shards.

Labeling is one user of the sharded scoring job in :mod:`pseudo_labels.sharded` (anomaly scoring is
the other): the source is cut into fixed partitions (index chunks of an in-memory source, or the files of
a streaming one: :mod:`noisystudent.data.streaming`), a Ray Data actor pool labels them, and the worker
that labels a partition writes it as one atomic ``part-NNNNN.parquet`` shard, so each image is labeled
exactly once, a killed job relabels only the missing partitions, and ``_job.json`` refuses a changed
source, teacher or chunk size. That module's docstring says how and why. What is labeling's own: the shard
holds :data:`~pseudo_labels.schema.SCHEMA` rows with :class:`~pseudo_labels.schema.LabelMetadata`, the
partition's unreadable images, and the partition's summary (:data:`SUMMARY_KEY`: rows, class counts,
confidence histogram) in its file metadata.

The summary the driver writes (``summary.json``) is the merge of those per-shard summaries, and
``rejected.csv`` is written shard by shard: the driver never holds a row per image, so its memory is
O(partitions x classes) whatever the number of images.

The teachers travel to the actors inside the constructor arguments (spec and weights, loaded once on
the driver with :func:`~noisystudent.checkpoint.load_checkpoint`), so workers need no access to the
checkpoint files either. Each actor builds its models once, in ``__init__``.

``_SUCCESS`` is written last, after ``rejected.csv`` and ``summary.json``; with it present a re-run
returns the existing summary (after checking that the folder holds labels of the same images,
teachers, temperature and top-k), and ``force=True`` deletes the folder's labeling files and starts again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from noisystudent.checkpoint import Checkpoint, load_checkpoint
from noisystudent.errors import UserError
from noisystudent.io import atomic_path, read_json, write_json, write_text

from .schema import COLUMNS, SCHEMA, LabelMetadata, effective_topk, probs_to_table
from noisystudent.data.hidden import class_map, true_labels  # noqa: F401 - true_labels: this package's face

from .job_folder import is_streaming, job_record, pending_chunks
from .sharded import ImageBatchActor, check_run_args, run_chunks
from .store import (
    SHARD_GLOB,
    SUCCESS,
    check_metadata,
    list_shards,
    read_metadata,
    shard_name,
    shard_rejected,
    write_table_shard,
)

DEFAULT_CHUNK_SIZE = 4096
SUMMARY_FILE = "summary.json"
REJECTED_FILE = "rejected.csv"
CONFIDENCE_BINS = 20
# A shard's own summary, in its Parquet key-value metadata: what the driver merges instead of reading rows.
SUMMARY_KEY = b"noisystudent.summary"


# --------------------------------------------------------------------------------------------------
# the actor


class Labeler(ImageBatchActor):
    """Ray Data callable class: decodes a batch of source indices and labels it with the teacher(s).

    The batch reaches :meth:`score` decoded, resized and normalised per batch on the actor's device
    (:class:`~pseudo_labels.sharded.ImageBatchActor`, :mod:`noisystudent.feed`), in fp16 channels-last on a GPU.

    Several teachers form an ensemble: each gives softmax(logits / T) and the probabilities are
    averaged with ``weights`` (normalised; equal when None). Images that cannot be decoded come back as rows with a ``reject_reason`` instead of
    failing the block (:class:`~pseudo_labels.sharded.ImageBatchActor`).
    """

    result_schema = SCHEMA

    def __init__(
        self,
        source: Any,
        teachers: Sequence[Checkpoint],
        temperature: float = 1.0,
        topk: Optional[int] = None,
        weights: Optional[Sequence[float]] = None,
        device: str = "cpu",
        decode_threads: int = 1,
        torch_threads: Optional[int] = None,
        kill_once_marker: Optional[str] = None,
        device_decode: bool = False,
    ) -> None:
        import torch

        super().__init__(source, decode_threads=decode_threads, torch_threads=torch_threads,
                         kill_once_marker=kill_once_marker, device=device, device_decode=device_decode)
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("labeling actor was given a GPU but torch sees no CUDA device")
        self.half = self.device.type == "cuda"
        # the batch arrives normalised in the model's dtype and memory format: channels-last everywhere (the
        # NHWC uint8 batch needs no transpose then; the model's inference 1.33-1.67x on a CPU, docs/accelerator.md),
        # fp16 on a GPU
        self.input_dtype = torch.float16 if self.half else torch.float32
        self.channels_last = True
        self.temperature = float(temperature)
        self.num_classes = teachers[0].spec.num_classes
        self.topk = effective_topk(topk, self.num_classes)
        from noisystudent.distill.ensemble import normalize_weights

        self.teacher_id = teacher_column(teachers)
        self.weights = normalize_weights(weights, len(teachers), "weights")
        self.models = []
        for ckpt in teachers:
            spec = ckpt.spec
            model = ckpt.build_model(self.device, channels_last=True)
            if self.half:
                model = model.half()
            key = self.add_input(spec.image_size, spec.in_chans, list(spec.mean), list(spec.std))
            self.models.append((key, model))

    def score(self, ids: list[str], inputs: dict[tuple, Any]) -> pa.Table:
        return probs_to_table(ids, self._probs(inputs), self.topk, self.teacher_id)

    def _probs(self, inputs: dict[tuple, Any]) -> np.ndarray:
        import torch

        from noisystudent.distill.ensemble import mixture

        logits = []
        with torch.inference_mode():
            for key, model in self.models:
                x = inputs[key].to(self.device, non_blocking=True)
                if self.half:
                    x = x.half()
                if x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits.append(model(x))
            return mixture(logits, self.weights, self.temperature).cpu().numpy()


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


def _check_args(temperature: float, topk: Optional[int], batch_size: int, num_actors: int,
                num_gpus_per_actor: float, num_cpus_per_actor: float, chunk_size: int) -> None:
    if not temperature > 0:
        raise UserError(f"pseudo_labels.temperature must be > 0, got {temperature}")
    if topk is not None and topk < 1:
        raise UserError(f"pseudo_labels.topk must be >= 1 or null, got {topk}")
    check_run_args("pseudo_labels", batch_size, num_actors, num_gpus_per_actor, num_cpus_per_actor, chunk_size)


def _histogram(values: np.ndarray, bins: int = CONFIDENCE_BINS) -> dict[str, list]:
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.astype(int).tolist()}


def shard_summary(labels: np.ndarray, confidence: np.ndarray, num_classes: int, rejected: int,
                  truth: Optional[np.ndarray] = None) -> dict[str, Any]:
    """What one shard contributes to ``summary.json``; summing these over shards gives the whole set's."""
    conf = np.asarray(confidence, dtype=np.float64)
    out = {"rows": int(len(labels)), "rejected": int(rejected),
           "class_counts": np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes].astype(int).tolist(),
           "confidence_counts": _histogram(conf)["counts"], "confidence_sum": float(conf.sum())}
    if truth is not None:
        known = np.asarray(truth) >= 0
        out["truth_known"] = int(known.sum())
        out["truth_correct"] = int((np.asarray(labels)[known] == np.asarray(truth)[known]).sum())
    return out


def read_shard_summary(path: Path, num_classes: int) -> dict[str, Any]:
    """A shard's summary from its footer; rebuilt from its rows for a shard written before summaries were."""
    import json

    import pyarrow.parquet as pq

    kv = dict(pq.read_schema(path).metadata or {})
    if SUMMARY_KEY in kv:
        return json.loads(kv[SUMMARY_KEY])
    t = pq.read_table(path, columns=["label", "confidence"])
    return shard_summary(t["label"].to_numpy(), t["confidence"].to_numpy(), num_classes, len(shard_rejected(path)))


def _write_chunk(out: Path, metadata: LabelMetadata):
    """How one partition's rows become a label shard (on the worker): :data:`SCHEMA` rows, the metadata,
    the partition's rejects and its summary."""
    import json

    kv = metadata.to_parquet_metadata()

    def write(c: int, rows: pa.Table, rejected: list[tuple[str, str]], truth: Optional[np.ndarray] = None) -> None:
        # cast: back to the non-nullable schema, and undo any type widening on the way
        labeled = rows.select(list(COLUMNS)).cast(SCHEMA).combine_chunks()
        summ = shard_summary(labeled["label"].to_numpy(), labeled["confidence"].to_numpy(), metadata.num_classes,
                             len(rejected), truth)
        write_table_shard(out / shard_name(c), labeled, {**kv, SUMMARY_KEY: json.dumps(summ).encode("utf-8")}, rejected)

    return write


def _merge_shard_summaries(shards: Sequence[Path], num_classes: int) -> dict[str, Any]:
    """The sum of the shards' own summaries (footers only: O(shards), never a row per image)."""
    rows = rejected = known = correct = 0
    classes = np.zeros(num_classes, dtype=np.int64)
    conf_counts = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
    conf_sum = 0.0
    has_truth = False
    for shard in shards:
        sm = read_shard_summary(shard, num_classes)
        rows += sm["rows"]
        rejected += sm["rejected"]
        classes += np.asarray(sm["class_counts"], dtype=np.int64)
        conf_counts += np.asarray(sm["confidence_counts"], dtype=np.int64)
        conf_sum += sm["confidence_sum"]
        if "truth_known" in sm:
            has_truth = True
            known += sm["truth_known"]
            correct += sm["truth_correct"]
    return {"rows": rows, "rejected": rejected, "classes": classes, "conf_counts": conf_counts, "conf_sum": conf_sum,
            "has_truth": has_truth, "known": known, "correct": correct}


def _write_rejected(path: Path, shards: Sequence[Path], skipped: list) -> None:
    """``rejected.csv``, shard by shard, then the images the source skipped when it was scanned."""
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "reason"])
            for shard in shards:
                w.writerows(shard_rejected(shard))
            w.writerows((i, f"skipped when the source was scanned: {r}") for i, r in skipped)


def _finish(out: Path, source: Any, metadata: LabelMetadata, *, processed: int, seconds: float,
            chunk_size: int, teacher_paths: list[str]) -> dict[str, Any]:
    """Merge the shards' summaries (footers only: O(shards)), check they account for every image of an
    in-memory source, then write ``rejected.csv`` (shard by shard), ``summary.json`` and ``_SUCCESS``."""
    shards = list_shards(out)
    m = _merge_shard_summaries(shards, metadata.num_classes)
    rows = m["rows"]
    n = rows + m["rejected"]
    if not is_streaming(source) and n != len(source):
        raise UserError(f"labels in {out} account for {n} images but the source has {len(source)}; relabel with force")

    skipped = list(getattr(source, "skipped", []) or [])
    _write_rejected(out / REJECTED_FILE, shards, skipped)
    summary: dict[str, Any] = {
        "images": n,
        "rows": rows,
        "rejected": m["rejected"],
        "skipped_at_scan": len(skipped),
        "classes": metadata.class_names,
        "class_histogram": m["classes"].astype(int).tolist(),
        "confidence_histogram": {"edges": _histogram(np.zeros(0))["edges"], "counts": m["conf_counts"].astype(int).tolist()},
        "mean_confidence": m["conf_sum"] / rows if rows else None,
        "processed_this_run": processed,
        "seconds": round(seconds, 3),
        "throughput_images_per_s": round(processed / seconds, 2) if processed and seconds > 0 else None,
        "teachers": metadata.teachers,
        "teacher_paths": teacher_paths,
        "teacher_weights": metadata.teacher_weights,
        "temperature": metadata.temperature,
        "topk": metadata.topk,
        "chunk_size": chunk_size,
        "shards": len(shards),
        "source_format": getattr(source, "format", "index_chunks"),
        "schema_version": metadata.schema_version,
    }
    if m["has_truth"] and m["known"]:
        summary["pseudo_label_accuracy"] = m["correct"] / m["known"]
        summary["pseudo_label_accuracy_n"] = int(m["known"])
    write_json(out / SUMMARY_FILE, summary)
    write_text(out / SUCCESS, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    return summary


def _label_metadata(teachers: Sequence[Checkpoint], temperature: float, topk: Optional[int],
                    weights: Optional[Sequence[float]]) -> LabelMetadata:
    """What every shard of this job records: the teachers' classes, temperature, top-k, teachers and weights."""
    from noisystudent.distill.ensemble import normalize_weights

    spec = teachers[0].spec
    return LabelMetadata(
        class_names=list(spec.classes),
        num_classes=spec.num_classes,
        temperature=temperature,
        topk=topk,
        teachers=[t.checkpoint_id for t in teachers],
        # recorded only when given, so a single teacher's (or an equal ensemble's) labels stay resumable
        teacher_weights=normalize_weights(weights, len(teachers), "weights") if weights is not None else None,
    )


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
    weights: Optional[Sequence[float]] = None,
    device_decode: bool = False,
) -> dict[str, Any]:
    """Label every image of ``source`` with the teacher checkpoint(s) into ``out_dir``; return the summary.

    Several checkpoints are an ensemble: the mixture of their probabilities with ``weights`` (one per
    checkpoint, normalised to sum 1; None: equal), recorded in the shards' metadata and the summary.

    ``source`` is an in-memory :class:`~noisystudent.data.base.ImageSource` (cut into chunks of
    ``chunk_size`` indices) or a streaming source (:class:`~noisystudent.data.streaming.StreamSource`, cut
    into its own partition files; ``chunk_size`` is then unused).

    Idempotent and resumable (see the module docstring): a finished folder is returned as is unless
    ``force``; an unfinished one is completed, labeling only the chunks whose shard is missing. Uses
    the running Ray instance (Ray Data starts a local one if none is running).

    Raises :class:`UserError` for bad arguments, unreadable or mismatched checkpoints, and a folder
    that holds labels of another job (other teachers, temperature, top-k, source or chunk size).

    ``device_decode``: on GPU actors, decode the JPEG bytes of a ``parquet_bytes``/``webdataset`` source with
    torchvision's nvJPEG decoder and resize on the GPU (:func:`noisystudent.feed.decode_jpeg_batch`); the
    pixels then differ slightly from the CPU path's (bilinear+antialias instead of area resize).

    ``kill_once_marker`` is a fault-injection hook for tests: the first actor to create that file
    exits hard mid-job, so the retry path is exercised with a real dead process.
    """
    _check_args(temperature, topk, batch_size, num_actors, num_gpus_per_actor, num_cpus_per_actor, chunk_size)
    out = Path(out_dir)
    teachers = load_teachers(checkpoints)
    metadata = _label_metadata(teachers, temperature, topk, weights)
    if not is_streaming(source) and len(source) == 0:
        raise UserError("the unlabeled source holds no images")
    job = job_record(source, chunk_size, metadata.record())
    todo = pending_chunks(out, job, force=force, outputs=(SUMMARY_FILE, REJECTED_FILE),
                          check_shard=lambda path: check_metadata(read_metadata(path), metadata, str(path), "this job"))
    if todo is None:
        return read_json(out / SUMMARY_FILE)

    start = time.perf_counter()
    processed = run_chunks(
        source, todo, chunk_size=chunk_size, actor=Labeler,
        actor_kwargs={"teachers": teachers, "temperature": temperature, "topk": topk, "weights": weights,
                      "device_decode": device_decode},
        write_chunk=_write_chunk(out, metadata), batch_size=batch_size, num_actors=num_actors,
        num_gpus_per_actor=num_gpus_per_actor, num_cpus_per_actor=num_cpus_per_actor, progress=progress,
        desc="labeling", kill_once_marker=kill_once_marker,
        truth_map=class_map(source, metadata.class_names),
    )
    seconds = time.perf_counter() - start
    return _finish(out, source, metadata, processed=processed, seconds=seconds, chunk_size=chunk_size,
                   teacher_paths=[str(p) for p in checkpoints])
