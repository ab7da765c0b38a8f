"""Feed the accelerator: labeling and noised training against the bare model, in one run (issue 28).

``PYTHONPATH=$PWD python -m bench.feed [--quick] [--device auto|cpu|cuda] [--threads 1,2,4,8,16]``. No Ray
(the device machine has none): the labeling rows call the labeling actor's two halves exactly as its
partition worker does (``prepare`` one batch ahead in a thread, ``finish`` on the device), and the
training rows call ``run_training`` in-process (what ``ray.workers: 0`` runs). ``--quick`` is the CPU
smoke test with tiny sizes (it proves the script runs; its figures mean little).

Rows (``img/s`` medians over interleaved rounds; ``ratio`` to the row's ``bare`` figure):

- decode: the input half alone, no model (decode, resize, normalise, stack) before and now, per decode
  threads; ``ratio`` to *before* with the first thread count. This is the row that shows why more threads
  made labeling slower (the per-image transform under the GIL) and that the batched path removes it.
- labeling, per case (model, side, format) and decode threads ``T``:
  *bare model*: the teacher's forward alone on a device-resident normalised batch (fp16 channels-last on a
  GPU), the ceiling; *before*: what the actor did before issue 28 (the per-image albumentations eval
  transform on a pool of ``T`` threads, then stack, copy and forward); *ours*: the actor now (per-batch
  decode and resize, normalise on the device, next batch prefetched); on a GPU with JPEG also
  *ours, nvJPEG* (``device_decode``). Cases: ResNet-14 on 28 px uint8 arrays, WRN-16-2 on 32 px RGB arrays,
  and the realistic one: ResNet-50 on a generated set of JPEGs of about 256 x 256..320 px (Parquet bytes),
  labeled at 224 px.
- training: ``run_training`` with RandAugment n2 m9, flip and crop, ``noise.backend`` cpu and device,
  against the bare step on device-resident tensors (the same model, batch and autocast): the ceiling.

Output: a table on stdout and JSON at ``$OUT/feed.json`` when ``$OUT`` is set, else ``bench/results/feed.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from bench import bare  # noqa: E402
from bench import gpu_check as gc  # noqa: E402  (its training sizes, noise and job)
from bench.cache import random_checkpoint  # noqa: E402
from bench.harness import environment, interleave, load_average, medians, quiet_warnings, rate  # noqa: E402
from bench.harness import resolve_device, results_path, row, row_table, write_results  # noqa: E402
from bench.sources import images_for, spec_of  # noqa: E402

ROWS: list[dict[str, Any]] = []


@dataclasses.dataclass(frozen=True)
class Sizes:
    small_images: int  # images per round, 28/32 px cases
    small_batch: int
    jpeg_images: int  # images per round, the 224 px JPEG case
    jpeg_batch: int
    repeats: int
    train: Any  # gpu_check.Sizes for the training rows


FULL = Sizes(small_images=16_384, small_batch=1024, jpeg_images=2048, jpeg_batch=256, repeats=2, train=gc.FULL)
QUICK = Sizes(small_images=1024, small_batch=256, jpeg_images=8, jpeg_batch=4, repeats=1, train=gc.QUICK)
#: (model, side, channels, format)
CASES = [("resnet14", 28, 1, "array"), ("wrn_16_2", 32, 3, "array"), ("resnet50", 224, 3, "jpeg")]


def add(section: str, name: str, ours: float, bare: Optional[float], **extra: Any) -> None:
    ROWS.append(row(section, name, ours, bare, **extra))


# --------------------------------------------------------------------------------------------------
# data


def jpeg_parquet(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs (quality 90) of smooth random content, 256 px high and 256..320 px wide, as a
    ``parquet_bytes`` file: the realistic case, made here (no download)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def one(k: int) -> bytes:
        r = np.random.default_rng([seed, k])
        low = r.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        w = 256 + int(r.integers(0, 65))
        img = Image.fromarray(low).resize((w, 256), Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + r.integers(-12, 13, (256, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        blobs = list(pool.map(one, range(n)))
    pq.write_table(pa.table({"image_id": [f"jpg-{k:07d}" for k in range(n)], "image": blobs}), path)
    return path


def source_for(fmt: str, n: int, side: int, chans: int, scratch: Path) -> tuple[Any, Callable]:
    """``(partition reader, raw -> HWC uint8 image)`` for a case."""
    from noisystudent.data.array import ArraySource
    from noisystudent.data.streaming import StreamSource
    from pseudo_labels.chunks import IndexChunks

    if fmt == "array":
        images = images_for(n, side, chans)
        reader = IndexChunks(ArraySource(images), chunk_size=n)
        return reader, lambda raw: images[raw]
    path = jpeg_parquet(scratch / f"jpeg-{n}.parquet", n)
    reader = StreamSource("parquet_bytes", path, in_chans=chans)
    return reader, lambda raw: reader.decode("", raw)


# --------------------------------------------------------------------------------------------------
# labeling


def labeling(sizes: Sizes, dev: torch.device, threads: list[int], scratch: Path) -> None:
    from noisystudent.feed import prefetch
    from noisystudent.transforms import create_transform
    from pseudo_labels.labeling import Labeler

    cuda = dev.type == "cuda"
    for name, side, chans, fmt in CASES:
        n, bs = (sizes.jpeg_images, sizes.jpeg_batch) if fmt == "jpeg" else (sizes.small_images, sizes.small_batch)
        spec = spec_of(name, side, chans)
        ckpt = random_checkpoint(spec, f"feed-{name}")
        reader, load_one = source_for(fmt, n, side, chans, scratch)
        batches = list(reader.read_partition(0, bs))  # ids and raws (indices, or JPEG bytes) held in memory
        tag = f"{name} {side}px {fmt}"

        model = ckpt.build_model(dev)
        if cuda:
            model = model.half().to(memory_format=torch.channels_last)
        x_dev = torch.randn(bs, chans, side, side, device=dev)
        x_dev = x_dev.half().contiguous(memory_format=torch.channels_last) if cuda else x_dev

        def bare_model() -> int:
            return bare.forward(model, x_dev, len(batches), softmax=True)

        tf = create_transform(side, chans, spec.mean, spec.std, None)

        def before(t: int) -> Callable[[], int]:
            pool = ThreadPoolExecutor(t) if t > 1 else None

            def f(r: Any) -> torch.Tensor:
                return tf(load_one(r))  # per image, as the actor did

            def run() -> int:
                xs = (torch.stack(list(pool.map(f, raws)) if pool else [f(r) for r in raws]) for _, raws in batches)
                return bare.label(model, xs, dev, half=cuda, channels_last=cuda)
            return run

        def ours(t: int, device_decode: bool = False) -> Callable[[], int]:
            lab = Labeler(source=reader, teachers=[ckpt], device=dev.type, decode_threads=t,
                          torch_threads=None if cuda else 1, device_decode=device_decode)

            def run() -> int:
                rows = 0
                for prepared in prefetch(batches, lambda b: lab.prepare(*b)):
                    table, _, _ = lab.finish(prepared)
                    rows += table.num_rows
                assert rows == n, rows
                return n
            return run

        measure: dict[str, Callable[[], float]] = {"model": lambda: rate(bare_model, dev)}
        for t in threads:
            b, o = before(t), ours(t)
            measure[f"before-{t}"] = lambda b=b: rate(b, dev)
            measure[f"ours-{t}"] = lambda o=o: rate(o, dev)
        if cuda and fmt == "jpeg":
            for t in (1,):
                o = ours(t, device_decode=True)
                measure[f"nvjpeg-{t}"] = lambda o=o: rate(o, dev)
        for fn in measure.values():  # warm-up: cuDNN, pools, page cache
            fn()
        med = medians(interleave(sizes.repeats, measure))
        m = med["model"]
        prec = "fp16" if cuda else "fp32"
        add("labeling", f"{tag}: bare model ({prec})", m, None, model=name, side=side, format=fmt, threads=None,
            backend="-", batch=bs)
        for key, v in med.items():
            if key == "model":
                continue
            kind, t = key.rsplit("-", 1)
            label = {"before": "before (per-image transform)", "ours": "ours", "nvjpeg": "ours, nvJPEG on the GPU"}[kind]
            add("labeling", f"{tag}: {label}, {t} decode thread(s)", v, m, model=name, side=side, format=fmt,
                threads=int(t), backend=kind, batch=bs)
        print(f"[ok] labeling {tag}", flush=True)


def decode(sizes: Sizes, dev: torch.device, threads: list[int], scratch: Path) -> None:
    """The input half alone (no model): where the time of "more decode threads, slower" went. *before* is the
    per-image albumentations eval transform on a pool of T threads, then stack (the old actor); *ours* is
    :meth:`ImageBatchActor.prepare` plus the normalisation of :class:`EvalInput` on ``dev``."""
    from noisystudent.transforms import create_transform
    from pseudo_labels.labeling import Labeler

    for name, side, chans, fmt in CASES:
        n, bs = (sizes.jpeg_images, sizes.jpeg_batch) if fmt == "jpeg" else (sizes.small_images, sizes.small_batch)
        spec = spec_of(name, side, chans)
        ckpt = random_checkpoint(spec, "decode")
        reader, load_one = source_for(fmt, n, side, chans, scratch)
        batches = list(reader.read_partition(0, bs))
        tf = create_transform(side, chans, spec.mean, spec.std, None)
        measure: dict[str, Callable[[], float]] = {}
        for t in threads:
            pool = ThreadPoolExecutor(t) if t > 1 else None

            def before(pool=pool) -> int:
                for _, raws in batches:
                    f = lambda r: tf(load_one(r))  # noqa: E731
                    torch.stack(list(pool.map(f, raws)) if pool else [f(r) for r in raws]).to(dev)
                return n

            lab = Labeler(source=reader, teachers=[ckpt], device=dev.type, decode_threads=t,
                          torch_threads=None if dev.type == "cuda" else 1)

            def ours(lab=lab) -> int:
                for ids, raws in batches:
                    _, _, host, _, _ = lab.prepare(ids, raws)
                    for key, x in host.items():
                        lab.inputs[key].batch(x, dev, lab.input_dtype, lab.channels_last)
                return n
            measure[f"before-{t}"] = lambda f=before: rate(f, dev)
            measure[f"ours-{t}"] = lambda f=ours: rate(f, dev)
        for fn in measure.values():
            fn()
        med = medians(interleave(sizes.repeats, measure))
        for key, v in med.items():
            kind, t = key.rsplit("-", 1)
            base = med[f"before-{threads[0]}"]
            add("decode", f"{name} {side}px {fmt}: {'before (per-image transform)' if kind == 'before' else 'ours'}, "
                f"{t} decode thread(s)", v, base, model=name, side=side, format=fmt, threads=int(t), backend=kind, batch=bs)
        print(f"[ok] decode {name} {side}px {fmt}", flush=True)


# --------------------------------------------------------------------------------------------------
# training


def training(sizes: Sizes, dev: torch.device, scratch: Path) -> None:
    from noisystudent.train import resolve_amp, run_training

    ts = sizes.train
    cases = [("resnet14", 28, 1), ("wrn_16_2", 32, 3)] + ([("resnet50", 224, 3)] if dev.type == "cuda" else [])
    for name, side, chans in cases:
        spec = spec_of(name, side, chans)
        batch = ts.train_batch if side < 100 else 128
        t_sizes = dataclasses.replace(ts, train_batch=batch, train_steps=ts.train_steps if side < 100 else max(2, ts.train_steps // 4))
        n = t_sizes.train_batch * t_sizes.train_steps
        images = images_for(n, side, chans)
        labels = np.random.default_rng(0).integers(0, 10, n)
        amp = "auto"
        amp_dtype = resolve_amp(amp, dev)
        runs: dict[str, Callable[[], float]] = {}
        for backend in ("cpu", "device"):
            noise = dataclasses.replace(gc.TEACHER_NOISE, backend=backend)

            def run(noise=noise, backend=backend) -> float:
                out = scratch / f"train-{name}-{backend}-{time.monotonic_ns()}"
                run_training(gc.train_job(out, spec, images, labels, t_sizes, dev, amp, noise=noise))
                return gc.last_epoch_rate(out)
            runs[backend] = run
        runs["ceiling"] = lambda: bare.ceiling_train(spec, t_sizes.train_batch, t_sizes.ceiling_steps, dev, amp_dtype)
        med = medians(interleave(sizes.repeats, runs))
        tag = f"{name} {side}px b{batch} w{t_sizes.workers}"
        add("training", f"{tag}: bare step, device-resident ({amp_dtype or 'fp32'})", med["ceiling"], None,
            model=name, side=side, format="array", threads=t_sizes.workers, backend="-", batch=batch)
        for backend in ("cpu", "device"):
            add("training", f"{tag}: run_training, RandAugment n2 m9 + flip + crop, noise.backend {backend}",
                med[backend], med["ceiling"], model=name, side=side, format="array", threads=t_sizes.workers,
                backend=backend, batch=batch)
        print(f"[ok] training {tag}", flush=True)


# --------------------------------------------------------------------------------------------------


def figure(result: dict[str, Any], path: Path) -> Path:
    """Bars of img/s per case and decode threads, before vs ours, for the decode and labeling rows of a run."""
    from bench.harness import pyplot, save_figure

    plt = pyplot()
    sections = [s for s in ("decode", "labeling") if any(r["section"] == s for r in result["rows"])]
    fig, axes = plt.subplots(1, len(sections), figsize=(6 * len(sections), 4), squeeze=False)
    for ax, sec in zip(axes[0], sections):
        rows = [r for r in result["rows"] if r["section"] == sec and r.get("threads")]
        labels = [f"{r['model']} {r['side']}px\n{r['backend']} T={r['threads']}" for r in rows]
        colors = ["#bbbbbb" if r["backend"] == "before" else "#2b7bba" for r in rows]
        ax.barh(range(len(rows)), [r["ours"] for r in rows], color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("images/s (log)")
        ax.set_title(f"{sec}: before (grey) vs ours (blue)", fontsize=9)
        ax.invert_yaxis()
    dev = result["environment"].get("gpu") or f"cpu x{result['environment'].get('cpus')}"
    fig.suptitle(f"bench.feed on {dev}; load {result['load_before'][0]:.0f}->{result['load_after'][0]:.0f}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    p.add_argument("--threads", default=None, help="decode threads to compare (default 1,2 on CPU; 1,2,4,8,16 on a GPU)")
    p.add_argument("--sections", default="decode,labeling,training", help="comma-separated: decode,labeling,training")
    p.add_argument("--repeats", type=int, default=None, help="rounds per measurement (median reported)")
    p.add_argument("--out", default=None, help="JSON path (default $OUT/feed.json or bench/results/feed.json)")
    p.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"), help="only draw the figure of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.plot:
        print(f"wrote {figure(json.loads(Path(args.plot[0]).read_text()), Path(args.plot[1]))}")
        return 0
    dev = resolve_device(args.device)
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    if dev.type == "cpu":
        sizes = dataclasses.replace(sizes, train=dataclasses.replace(sizes.train, workers=min(sizes.train.workers, 1)))
    threads = [int(t) for t in (args.threads or ("1,2,4,8,16" if dev.type == "cuda" else "1,2")).split(",")]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    out_path = results_path("feed.json", args.out)
    quiet_warnings(categories=[DeprecationWarning])
    load_before = load_average()
    env = environment(dev)
    print(json.dumps(env, indent=1), flush=True)
    t0 = time.perf_counter()
    failed = []
    with tempfile.TemporaryDirectory(prefix="feed-") as tmp:
        for sec, fn in (("decode", lambda: decode(sizes, dev, threads, Path(tmp))),
                        ("labeling", lambda: labeling(sizes, dev, threads, Path(tmp))),
                        ("training", lambda: training(sizes, dev, Path(tmp)))):
            if sec not in sections:
                continue
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - report and go on to the next section
                import traceback

                traceback.print_exc()
                failed.append(f"{sec}: {type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t0
    load_after = load_average()
    print()
    print(row_table(ROWS, ours="img/s", note=False))
    print(f"\nload average before {load_before}, after {load_after}; {seconds:.0f} s; failed: {failed or 'none'}")
    write_results(out_path, {"environment": env, "quick": args.quick, "threads": threads, "rows": ROWS,
                             "failed": failed, "seconds": round(seconds, 1), "load_before": load_before,
                             "load_after": load_after, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "command": " ".join(["python -m bench.feed"] + (argv or sys.argv[1:]))})
    print(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
