"""``make bench-scale``: label, select and train on 10^5 .. 10^6+ images with memory flat in their number.

What is measured. A synthetic source made on the fly in the workers (no disk:
:class:`~bench.sources.SyntheticStream`, 8x8 grayscale images that are a fixed function of
their index) is labeled by a 1,000-class ResNet-8 teacher (random weights: throughput and memory do not
depend on them) with ``topk=5``, through the real job (:func:`pseudo_labels.label_images`: partitions of
10,000 images, an actor pool, shards written by the workers, the summary merged from shard footers), then
selected with the pipeline's streamed selection (:func:`pseudo_labels.selection_io.select_folder`,
threshold 0, auto K = N / 1,000 per class, so classes the teacher under-uses are duplicated). At each size:
labeling img/s, selection seconds, the driver's peak RSS during the size (sampled every 0.2 s from
``/proc``) and the largest RSS of any Ray worker process (the labeling actors).

Then one student epoch over the largest set, selected again with every pseudo-label kept (threshold 0,
no balancing: the random teacher favours few classes, so the balanced set is small): the pipeline's reading of a selection
(:func:`~pseudo_labels.selection_io.read_selection_arrow`, :func:`~pseudo_labels.selection_io.topk_arrays`),
the engine's datasets (:class:`~noisystudent.data.torch_dataset.SourceDataset` with
:class:`~noisystudent.data.torch_dataset.TopKTargets`, duplicates by
:class:`~noisystudent.data.torch_dataset.RepeatedDataset`), a shuffling ``DataLoader`` of batch 1,024 and a
linear 64 -> 1,000 student with a soft cross-entropy: the data path is what is measured, so the model is
tiny and there is no augmentation. Memory is reported the same way, beside what a dense ``(N, 1000)``
float32 target matrix would have taken.

Bare-loop speed: the same ResNet-8 forward on the same synthetic images, generated and transformed in one
process with one thread, no Ray, no files: the machine's speed for this work, to read absolute times by.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import click
import numpy as np

from noisystudent.data.base import ImageSource

from .cache import random_teacher
from .harness import Stopwatch, cleanup, environment, init_ray, load_average, scratch_dir, text_table

ROOT = Path(__file__).resolve().parent.parent
DOCS_JSON = ROOT / "docs" / "bench-scale.json"
DOCS_PNG = ROOT / "docs" / "bench-scale.png"
CLASSES, TOPK, IMAGE, PARTITION, BATCH = 1000, 5, 8, 10_000, 1024


# --------------------------------------------------------------------------------------------------
# memory: sampled from /proc (no psutil here)


def _rss_mb(pid: str | int, key: str = "VmRSS") -> Optional[float]:
    """``key`` of ``/proc/<pid>/status`` in MB: ``VmRSS`` (resident now) or ``VmHWM`` (its peak)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _ray_workers() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read(200)
        except OSError:
            continue
        if cmd.startswith(b"ray::") and b"IDLE" not in cmd:
            out.append(int(entry))
    return out


class MemorySampler:
    """Peak RSS of this process and of the busiest Ray worker while the ``with`` block runs."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.driver = 0.0
        self.worker = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.driver = max(self.driver, _rss_mb("self") or 0.0)
            if n % 3 == 0:  # listing /proc costs more than reading one file
                for pid in _ray_workers():
                    self.worker = max(self.worker, _rss_mb(pid) or 0.0)
            n += 1
            self._stop.wait(self.period)

    def __enter__(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.driver = max(self.driver, _rss_mb("self") or 0.0)


# --------------------------------------------------------------------------------------------------
# the pieces


def teacher_spec() -> Any:
    """The 1,000-class ResNet-8 on 8x8 grayscale images that labels the synthetic images (random weights)."""
    from noisystudent.checkpoint import ModelSpec

    return ModelSpec(name="resnet8", num_classes=CLASSES, in_chans=1, image_size=IMAGE, mean=[0.5], std=[0.5],
                     classes=[f"c{k:04d}" for k in range(CLASSES)])


def bare_loop(ckpt: Path, n: int) -> float:
    """img/s of generate + transform + ResNet-8 forward + softmax in this process, one thread, no Ray
    (:func:`bench.bare.label` on batches made here)."""
    import torch

    from noisystudent.checkpoint import load_checkpoint
    from noisystudent.transforms import create_transform

    from . import bare
    from .sources import SyntheticStream

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_checkpoint(ckpt).build_model("cpu")
    tf = create_transform(IMAGE, 1, [0.5], [0.5], noise=None)
    src = SyntheticStream(n, PARTITION, IMAGE, 1)
    batches = (torch.stack([tf(src.decode("", i)) for i in range(s, min(n, s + BATCH))]) for s in range(0, n, BATCH))
    with Stopwatch() as sw:
        bare.label(model, batches, "cpu")
    torch.set_num_threads(old)
    return n / sw.seconds


def label_and_select(n: int, ckpt: Path, work: Path, actors: int) -> dict[str, Any]:
    from pseudo_labels import label_images
    from pseudo_labels.selection_io import select_folder

    from .sources import SyntheticStream

    src = SyntheticStream(n, PARTITION, IMAGE, 1)
    out = {"images": n, "partitions": src.num_partitions}
    with MemorySampler() as mem_label, Stopwatch() as sw:
        summary = label_images(src, [ckpt], work / f"labels-{n}", topk=TOPK, batch_size=BATCH, num_actors=actors,
                               num_cpus_per_actor=1, progress=True)
    assert summary["images"] == n and summary["rows"] == n, summary
    out.update(label_seconds=round(sw.seconds, 2), label_img_s=round(n / sw.seconds, 1),
               label_driver_rss_mb=round(mem_label.driver, 1), label_worker_rss_mb=round(mem_label.worker, 1),
               parquet_bytes_per_image=round(sum(p.stat().st_size for p in (work / f"labels-{n}").glob("part-*.parquet")) / n, 1))
    with MemorySampler() as mem_sel, Stopwatch() as sw:
        sel = select_folder(work / f"labels-{n}", work / f"selected-{n}", threshold=0.0, per_class=0)
    out.update(select_seconds=round(sw.seconds, 2), select_img_s=round(n / sw.seconds, 1),
               select_driver_rss_mb=round(mem_sel.driver, 1), K=sel["K"], rows_selected=sel["rows_selected"],
               weighted_rows_selected=sel["weighted_rows_selected"])
    out["driver_peak_rss_mb"] = max(out["label_driver_rss_mb"], out["select_driver_rss_mb"])
    return out


class SyntheticImages(ImageSource):
    """The selected synthetic images (ids ``syn-<index>``) as a random-access source: what the student reads.
    The indices are one int64 array parsed from the Arrow ids, not a Python object per image."""

    def __init__(self, ids: Any) -> None:
        import pyarrow.compute as pc

        from .sources import SyntheticStream

        super().__init__(1, None)
        self.index = pc.cast(pc.utf8_slice_codeunits(ids, 4), "int64").to_numpy()
        self.gen = SyntheticStream(int(self.index.max()) + 1 if len(self.index) else 1, PARTITION, IMAGE, 1)

    def __len__(self) -> int:
        return len(self.index)

    def image_id(self, i: int) -> str:
        return f"syn-{int(self.index[i]):09d}"

    def load(self, i: int) -> np.ndarray:
        return self.gen.decode("", int(self.index[i]))

    def _take(self, idx: np.ndarray) -> None:
        self.index = self.index[idx]


def student_epoch(labels: Path, selected: Path, max_steps: Optional[int], sampler: str = "engine",
                  reader: str = "shards") -> dict[str, Any]:
    """One student epoch in a fresh process (spawned), so its peak RSS is the student's alone; ``sampler``:
    ``engine`` (the training engine's loader, :class:`~noisystudent.data.samplers.ShuffleSampler`) or
    ``torch`` (``DataLoader(shuffle=True)``: ``RandomSampler``, for comparison); ``reader``: ``shards``
    (:func:`~pseudo_labels.selection_io.read_selection_targets`, the pipeline's) or ``table`` (one Arrow
    table of the whole selection, converted after: the pipeline before, for comparison)."""
    import multiprocessing as mp

    from pseudo_labels.selection_io import select_folder

    with Stopwatch() as sel_sw:
        # every pseudo-label kept (threshold 0, no balancing): the random teacher uses few of the 1,000 classes,
        # so the balanced selection of the table is far smaller than N; this one is N rows of 1,000-class top-5
        if not (selected / "_SUCCESS").exists():
            select_folder(labels, selected, threshold=0.0, per_class=None)
    with mp.get_context("spawn").Pool(1) as pool:
        out = pool.apply(_student_epoch, (selected, max_steps, sampler, reader))
    return {"sampler": sampler, "reader": reader, "select_all_seconds": round(sel_sw.seconds, 2), **out}


def _student_epoch(selected: Path, max_steps: Optional[int], sampler: str, reader: str) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from noisystudent.data.torch_dataset import RepeatedDataset, SourceDataset, TopKTargets, collate_skip_none
    from pseudo_labels import read_metadata
    from noisystudent.engine import make_loader
    from pseudo_labels.selection_io import read_selection_arrow, read_selection_targets, topk_arrays

    torch.set_num_threads(1)
    baseline = _rss_mb("self")  # the interpreter, torch and pyarrow, before any row is read
    with Stopwatch() as sw:
        meta = read_metadata(selected)
        if reader == "shards":  # what the pipeline does (pipelines.steps.pseudo_set)
            ids, classes, probs, weights = read_selection_targets(selected, meta)
        else:  # the whole selection as one Arrow table, then converted (the pipeline before)
            table = read_selection_arrow(selected, ["image_id", "topk_classes", "topk_probs", "weight"])
            classes, probs = topk_arrays(table)
            weights, ids = table["weight"].to_numpy().astype(np.int64), table["image_id"]
            del table
        targets = TopKTargets(classes, probs, meta.num_classes)
        src = SyntheticImages(ids)
        del ids
        ds = RepeatedDataset(SourceDataset(src, None, targets=targets), weights)
        if sampler == "engine":
            loader = make_loader(ds, BATCH, num_workers=0, seed=0)
        else:
            g = torch.Generator()
            g.manual_seed(0)
            loader = DataLoader(ds, batch_size=BATCH, shuffle=True, collate_fn=collate_skip_none, generator=g,
                                num_workers=0, drop_last=True)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(IMAGE * IMAGE, meta.num_classes))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        seen = steps = 0
        loss = float("nan")
        for x, y, _ in loader:
            out = model(x)
            l = -(y * F.log_softmax(out, dim=1)).sum(1).mean()
            opt.zero_grad()
            l.backward()
            opt.step()
            seen += len(x)
            steps += 1
            loss = float(l.detach())
            if max_steps and steps >= max_steps:
                break
    n_rows = len(weights)
    peak = _rss_mb("self", "VmHWM")
    return {"baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(peak, 1),
            "peak_bytes_per_row": round((peak - baseline) * 2**20 / max(n_rows, 1), 1), "selected_rows": n_rows, "epoch_images": int(weights.sum()), "images_seen": seen, "steps": steps,
            "full_epoch": not max_steps or seen >= int(weights.sum()) - BATCH, "seconds": round(sw.seconds, 2),
            "img_s": round(seen / sw.seconds, 1), "last_loss": round(loss, 4),
            "targets_mb": round(targets.nbytes / 2**20, 1), "dense_targets_would_be_mb": round(n_rows * CLASSES * 4 / 2**20, 1)}


# --------------------------------------------------------------------------------------------------
# output


def table(rows: list[dict], bare: float, students: list[dict]) -> str:
    head = ["images", "partitions", "label img/s", "label s", "select s", "driver peak RSS MB", "largest actor RSS MB",
            "parquet B/img", "K", "selected (weighted)"]
    body = [[f"{r['images']:,}", str(r["partitions"]), f"{r['label_img_s']:,.0f}", f"{r['label_seconds']:.1f}",
             f"{r['select_seconds']:.1f}", f"{r['driver_peak_rss_mb']:.0f}", f"{r['label_worker_rss_mb']:.0f}",
             f"{r['parquet_bytes_per_image']:.0f}", str(r["K"]), f"{r['rows_selected']:,} ({r['weighted_rows_selected']:,})"]
            for r in rows]
    lines = text_table(head, body, right=range(len(head)), rule="  ")
    lines.append(f"bare loop (one process, one thread, same images and ResNet-8 forward, no Ray): {bare:,.0f} img/s")
    for s in students:
        lines.append(f"student epoch over {s['selected_rows']:,} selected rows ({s['epoch_images']:,} with duplicates), "
                     f"{CLASSES} classes, top-{TOPK}: {s['images_seen']:,} images in {s['seconds']:.1f} s "
                     f"({s['img_s']:,.0f} img/s{'' if s['full_epoch'] else ', stopped early'}), {s['sampler']} sampler, {s.get('reader', 'table')} read, "
                     f"peak RSS {s['peak_rss_mb']:.0f} MB over a {s['baseline_rss_mb']:.0f} MB process "
                     f"({s['peak_bytes_per_row']:.0f} B/row); top-k targets {s['targets_mb']:.0f} MB where dense (N, C) "
                     f"float32 would be {s['dense_targets_would_be_mb']:,.0f} MB")
    return "\n".join(lines)


def student_slopes(students: list[dict]) -> list[dict]:
    """Per (sampler, reader): the student's peak RSS at each N and the bytes a row it grows by between the
    smallest and largest N (a fixed cost of the process cancels out; one N alone says nothing)."""
    out = []
    for key in dict.fromkeys((s["sampler"], s.get("reader", "table")) for s in students):
        pts = sorted((s["selected_rows"], s["peak_rss_mb"]) for s in students if (s["sampler"], s.get("reader", "table")) == key)
        slope = None
        if len(pts) > 1 and pts[-1][0] > pts[0][0]:
            slope = round((pts[-1][1] - pts[0][1]) * 2**20 / (pts[-1][0] - pts[0][0]), 1)
        out.append({"sampler": key[0], "reader": key[1], "rows": [p[0] for p in pts], "peak_rss_mb": [p[1] for p in pts],
                    "bytes_per_row": slope})
    return out


def plot(rows: list[dict], bare: float, path: Path, students: Optional[list[dict]] = None) -> None:
    from bench.harness import pyplot, save_figure

    plt = pyplot()
    slopes = [s for s in student_slopes(students or []) if s["bytes_per_row"] is not None]
    n = [r["images"] for r in rows]
    fig, ax = plt.subplots(1, 3 if slopes else 2, figsize=(15 if slopes else 10, 4))
    ax[0].loglog(n, [r["driver_peak_rss_mb"] for r in rows], "o-", label="driver peak RSS")
    ax[0].loglog(n, [r["label_worker_rss_mb"] for r in rows], "s-", label="largest actor RSS")
    ax[0].loglog(n, [rows[0]["driver_peak_rss_mb"] * x / n[0] for x in n], ":", color="gray",
                 label="linear in N (for scale)")
    ax[0].set_xlabel("unlabeled images N")
    ax[0].set_ylabel("MB")
    ax[0].set_title("labeling and selection memory (flat = scales)")
    ax[0].legend(fontsize=8)
    ax[1].loglog(n, [r["label_img_s"] for r in rows], "o-", label="labeling (Ray Data actors)")
    ax[1].loglog(n, [r["select_img_s"] for r in rows], "s-", label="selection (streamed)")
    ax[1].axhline(bare, color="gray", ls=":", label="bare loop, 1 process")
    ax[1].set_xlabel("unlabeled images N")
    ax[1].set_ylabel("images / s")
    ax[1].set_title("throughput")
    ax[1].legend(fontsize=8)
    if slopes:
        names = [f"{s['sampler']} sampler\n{s['reader']} read" for s in slopes]
        vals = [s["bytes_per_row"] for s in slopes]
        ax[2].bar(range(len(vals)), vals, color=[f"C{k}" for k in range(len(vals))])
        for k, v in enumerate(vals):
            ax[2].text(k, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax[2].set_xticks(range(len(vals)), names, fontsize=8)
        ax[2].set_ylabel("peak RSS growth, bytes per selected row")
        ax[2].set_title(f"student: growth {slopes[0]['rows'][0]:,} -> {slopes[0]['rows'][-1]:,} rows\n"
                        f"(dense (N, {CLASSES:,}) targets alone: {4 * CLASSES:,} B/row)", fontsize=9)
    fig.suptitle("python -m bench.scale: synthetic 8x8 images, ResNet-8, 1,000 classes, top-5", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--sizes", default="100000,1000000", show_default=True, help="Comma-separated numbers of images.")
@click.option("--quick", is_flag=True, help="Sizes 20,000 and 100,000 and a short student run (a smoke test).")
@click.option("--actors", default=2, show_default=True, type=click.IntRange(1, 256), help="Labeling actors (1 CPU each).")
@click.option("--student-steps", default=None, type=click.IntRange(1), help="Stop the student epoch after this many steps.")
@click.option("--no-student", is_flag=True, help="Skip the student epoch.")
@click.option("--student-sizes", default=None, help="Comma-separated sizes whose labels a student epoch trains on "
              "(default: the largest).")
@click.option("--student-samplers", default="engine", show_default=True,
              help="Comma-separated: engine (the training loader's ShuffleSampler) and/or torch (RandomSampler).")
@click.option("--student-readers", default="shards", show_default=True,
              help="Comma-separated: shards (the pipeline's shard-by-shard read) and/or table (one whole table).")
@click.option("--bare-images", default=20_000, show_default=True, type=click.IntRange(1000))
@click.option("--out", default=str(DOCS_JSON), show_default=True, help="Where the JSON goes (the PNG goes beside it).")
def main(sizes: str, quick: bool, actors: int, student_steps: Optional[int], no_student: bool,
         student_sizes: Optional[str], student_samplers: str, student_readers: str, bare_images: int, out: str) -> None:
    """Memory and throughput of labeling, selection and a student epoch against the number of images."""
    import logging

    from noisystudent.io import write_json

    ns = [20_000, 100_000] if quick else [int(float(x)) for x in sizes.split(",") if x.strip()]
    if quick and student_steps is None:
        student_steps = 50
    student_ns = [int(float(x)) for x in student_sizes.split(",")] if student_sizes else [ns[-1]]
    if set(student_ns) - set(ns):
        raise click.BadParameter(f"{student_ns} are not all among the sizes {ns}", param_hint="--student-sizes")
    t0 = time.perf_counter()
    load_before = load_average()
    work = scratch_dir("scale")
    ckpt = random_teacher(work / "teacher", teacher_spec(), seed=0)
    bare = bare_loop(ckpt, bare_images)
    print(f"bare loop: {bare:,.0f} img/s", flush=True)
    ray_s = init_ray()
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    rows = []
    out_path = Path(out)
    meta = {"command": "python -m bench.scale " + " ".join(sys.argv[1:]), "classes": CLASSES, "topk": TOPK,
            "image": f"{IMAGE}x{IMAGE}x1", "teacher": "resnet8 (random init)", "partition_size": PARTITION,
            "batch_size": BATCH, "actors": actors, "bare_loop_img_s": round(bare, 1), "ray_start_s": round(ray_s, 1),
            "environment": environment(), "load_average_before": load_before}
    students: list[dict] = []
    try:
        for n in ns:
            rows.append(label_and_select(n, ckpt, work, actors))
            print(json.dumps(rows[-1]), flush=True)
            write_json(out_path, {"meta": meta, "sizes": rows, "students": students})  # what fitted so far
        for n in [] if no_student else student_ns:
            for smp, rdr in [(a.strip(), b.strip()) for a in student_samplers.split(",") if a.strip()
                             for b in student_readers.split(",") if b.strip()]:
                students.append({"images": n, **student_epoch(work / f"labels-{n}", work / f"selected-all-{n}",
                                                              student_steps, smp, rdr)})
                print(json.dumps(students[-1]), flush=True)
                write_json(out_path, {"meta": meta, "sizes": rows, "students": students})
    finally:
        meta["load_average_after"] = load_average()
        meta["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(out_path, {"meta": meta, "sizes": rows, "students": students})
        if students:
            meta["student_bytes_per_row"] = student_slopes(students)
            write_json(out_path, {"meta": meta, "sizes": rows, "students": students})
        if rows:
            plot(rows, bare, out_path.with_suffix(".png"), students)
        cleanup()
    print(table(rows, bare, students))
    print(f"\nwrote {out_path} and {out_path.with_suffix('.png')} ({meta['seconds']:.0f} s; load average "
          f"{load_before[0]} before, {meta['load_average_after'][0]} after)")


if __name__ == "__main__":
    main()
