"""GPU check: the CUDA paths of the torch layers, measured against bare PyTorch loops, without Ray.

Run from the source tree (``PYTHONPATH=$PWD python bench/gpu_check.py``); ``--quick`` is a CPU smoke test
with tiny sizes. Nothing here imports Ray: the Ray layers call exactly these torch layers. Built on
:mod:`bench.harness` (timing, interleaving, environment, results), :mod:`bench.bare` (the bare loops) and
:mod:`bench.cache` (the random teachers), none of which imports Ray either.

Sections (each check records ``ok`` or its error and the run goes on):

- ``labeling``: :class:`pseudo_labels.labeling.Labeler`, the callable class of the labeling job's
  ``map_batches``, built as the job builds it (``fn_constructor_kwargs``: source, teacher checkpoints,
  device) and called through ``process(ids, raws)`` as the partition worker calls it. *ours-call* is the whole actor
  call (decode, transform, fp16 forward, Arrow table); *ours-probs* is its tensor part
  (``Labeler._probs``) on pre-transformed CPU batches, compared with a bare ``model.half()`` loop on the
  same batches (copy to the GPU, forward, softmax, back to numpy). *ceiling* is the model's pure fp16
  forward on a GPU-resident batch (no copies). Probabilities are checked against the fp32 model.
- ``training``: :func:`noisystudent.engine.run_training` in-process (what ``ray.workers: 0`` runs) on
  synthetic images with the teacher noise of ``configs/fashion_mnist.yaml``, against a bare loop with the
  same model, transform, DataLoader (same workers), nesterov SGD, batch size and autocast dtype. Two
  epochs each; the second is timed (the first starts workers and warms cuDNN). *ceiling* is the bare
  step on GPU-resident tensors (no data loading). Also: the online teacher of the distillation engine
  (``hinton`` and ``fitnet`` with a ResNet-26 teacher checkpoint) against a bare Hinton-KD loop, a student
  job (soft pseudo-labels, EMA, evaluation), ``amp: fp16`` with loss scaling, and resume from ``last.pt``
  after an injected failure.
- ``ddp``: single-process DDP (world size 1, NCCL on CUDA, gloo on CPU, ``tcp://127.0.0.1``) wrapping
  the model of ``run_training`` through :class:`~noisystudent.engine.TrainHooks`, as Ray Train's
  ``prepare_model`` does (the loaders shard by rank themselves), plus an ``all_reduce``.

Output: a table on stdout and JSON to ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
``bench/results/gpu_check.json`` (``--out`` overrides).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import bare  # noqa: E402
from bench.cache import random_checkpoint, random_teacher  # noqa: E402
from bench.harness import environment, history_rate, interleave, medians, quiet_warnings, rate  # noqa: E402
from bench.harness import resolve_device, results_path, row, row_table, sync, write_results  # noqa: E402
from bench.sources import CLASSES, array_source, images_for, spec_of  # noqa: E402
from noisystudent.checkpoint import ModelSpec  # noqa: E402
from noisystudent.config import ModelConfig, NoiseConfig, TrainConfig  # noqa: E402
from pipelines.config import StudentConfig  # noqa: E402

#: (model, image size, channels) for the labeling rows
LABEL_MODELS = [("resnet14", 28, 1), ("resnet26", 28, 1), ("wrn_16_2", 32, 3)]
#: the same for the training rows
TRAIN_MODELS = [("resnet14", 28, 1), ("wrn_16_2", 32, 3)]
TEACHER_NOISE = NoiseConfig(randaugment_n=2, randaugment_m=9.0, hflip=True, crop_padding=2)
#: no augmentation at all: the transform is then the eval transform (resize, normalise)
CLEAN = bare.clean_noise()


@dataclasses.dataclass(frozen=True)
class Sizes:
    label_batch: int
    label_batches: int
    train_batch: int
    train_steps: int  # steps per epoch (the data set holds exactly this many batches)
    workers: int  # DataLoader workers, ours and bare
    repeats: int  # alternating ours/bare pairs; medians are reported
    ceiling_steps: int


FULL = Sizes(label_batch=1024, label_batches=16, train_batch=256, train_steps=40, workers=12, repeats=3, ceiling_steps=50)
QUICK = Sizes(label_batch=64, label_batches=2, train_batch=32, train_steps=3, workers=0, repeats=1, ceiling_steps=3)

ROWS: list[dict[str, Any]] = []
CHECKS: list[dict[str, Any]] = []
ONLY: list[str] = []  # --only: run just the checks whose name contains one of these


# --------------------------------------------------------------------------------------------------
# helpers


def add_row(section: str, name: str, ours: Optional[float], bare: Optional[float] = None, note: str = "") -> None:
    ROWS.append(row(section, name, ours, bare, note=note))


def check(name: str):
    """Decorator-ish: run ``fn``, record ok/error (with the traceback tail) and its details; never raise."""

    def wrap(fn: Callable[[], Optional[dict]]):
        if ONLY and not any(o in name for o in ONLY):
            return None
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"name": name}
        try:
            entry.update(fn() or {})
            entry["ok"] = True
        except Exception as exc:  # noqa: BLE001 - a check reports its failure and the run goes on
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc().splitlines()[-12:]
            print(f"  FAILED {name}: {entry['error']}", flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        CHECKS.append(entry)
        print(f"[{'ok' if entry['ok'] else 'FAIL'}] {name} ({entry['seconds']} s)", flush=True)
        return entry

    return wrap


# --------------------------------------------------------------------------------------------------
# 1. labeling


def labeling(sizes: Sizes, dev: torch.device) -> None:
    from pseudo_labels.chunks import IndexChunks
    from pseudo_labels.labeling import Labeler

    cuda = dev.type == "cuda"
    bs, nb = sizes.label_batch, sizes.label_batches
    n = bs * nb
    for name, size, ch in LABEL_MODELS[: 1 if sizes is QUICK else None]:

        @check(f"labeling {name} {size}x{size}x{ch}")
        def _():
            spec = spec_of(name, size, ch)
            ckpt = random_checkpoint(spec, f"gpu-check-{name}")
            images = images_for(n, size, ch)
            # as the partition worker builds the actor: Labeler(source=<partition reader>, **actor_kwargs),
            # device "cuda" when it has a GPU; the reader of an in-memory source is its index chunks
            reader = IndexChunks(array_source(images), chunk_size=n)
            kwargs = dict(source=reader, teachers=[ckpt], temperature=1.0, topk=None, device=dev.type)
            labeler = Labeler(**kwargs, decode_threads=1)
            labeler8 = Labeler(**kwargs, decode_threads=8)
            key, model = labeler.models[0]
            tf = labeler.transforms[key]
            batches = [np.arange(s, s + bs, dtype=np.int64) for s in range(0, n, bs)]
            cpu_batches = [torch.stack([tf(images[i]) for i in b]) for b in batches]

            plain = ckpt.build_model(dev)  # the bare loop's model: fp16 (NCHW) on a GPU
            if cuda:
                plain = plain.half()
            fp32 = ckpt.build_model(dev)

            def ours_call(lab) -> Callable[[], int]:
                def run() -> int:
                    rows = 0
                    for b in batches:
                        ids = [reader.partition_name(0)] * len(b)  # ids are carried, not read
                        rows += lab.process(ids, b.tolist())[0].num_rows
                    assert rows == n, rows
                    return n
                return run

            def ours_probs() -> int:
                for x in cpu_batches:
                    labeler._probs({key: x})
                return n

            def bare_probs() -> int:
                return bare.label(plain, cpu_batches, dev, half=cuda)

            # correctness first (also the warm-up of every path)
            got = labeler._probs({key: cpu_batches[0]})
            with torch.inference_mode():
                ref = torch.softmax(fp32(cpu_batches[0].to(dev)).float(), dim=1).cpu().numpy()
            table = labeler.process([f"i{k}" for k in batches[0]], batches[0].tolist())[0]
            max_diff = float(np.abs(got - ref).max())
            agree = float((got.argmax(1) == ref.argmax(1)).mean())
            labels_ok = table["label"].to_numpy().tolist() == got.argmax(1).tolist()
            assert got.shape == (bs, len(CLASSES)) and np.allclose(got.sum(1), 1, atol=1e-3)
            assert max_diff < 2e-2, f"fp16 labeler probabilities differ from fp32 by {max_diff}"
            ours_call(labeler8)()
            bare_probs()

            med = medians(interleave(sizes.repeats, {
                "probs": lambda: rate(ours_probs, dev),
                "bare": lambda: rate(bare_probs, dev),
                "call1": lambda: rate(ours_call(labeler), dev),
                "call8": lambda: rate(ours_call(labeler8), dev),
            }))

            # ceilings: pure forward on a GPU-resident batch, no host copies
            x_dev = cpu_batches[0].to(dev)
            x_ours = x_dev.half().contiguous(memory_format=torch.channels_last) if cuda else x_dev
            x_bare = x_dev.half() if cuda else x_dev
            for m, x in ((model, x_ours), (plain, x_bare), (fp32, x_dev)):
                bare.forward(m, x, nb)
            ceil = medians(interleave(sizes.repeats, {
                "ours": lambda: rate(lambda: bare.forward(model, x_ours, nb), dev),
                "bare": lambda: rate(lambda: bare.forward(plain, x_bare, nb), dev),
                "fp32": lambda: rate(lambda: bare.forward(fp32, x_dev, nb), dev),
            }))
            prec = "fp16+channels_last" if cuda else "fp32"
            tag = f"{name} {size}x{size}x{ch} b{bs}"
            add_row("labeling", f"{tag} Labeler._probs vs bare half loop", med["probs"], med["bare"], prec)
            add_row("labeling", f"{tag} Labeler call, 1 decode thread", med["call1"], None, "decode+transform+fwd+table")
            add_row("labeling", f"{tag} Labeler call, 8 decode threads", med["call8"], None, "decode+transform+fwd+table")
            add_row("labeling", f"{tag} ceiling: Labeler model, GPU-resident", ceil["ours"], ceil["bare"], "vs bare half NCHW")
            add_row("labeling", f"{tag} ceiling: fp32 model, GPU-resident", ceil["fp32"], None, "")
            return {"max_abs_prob_diff_vs_fp32": max_diff, "argmax_agreement_vs_fp32": agree, "table_labels_match": labels_ok,
                    "images_per_s": {**{k: round(v, 1) for k, v in med.items()},
                                     **{f"ceiling_{k}": round(v, 1) for k, v in ceil.items()}}}


# --------------------------------------------------------------------------------------------------
# 2. training


def train_job(out: Path, spec: ModelSpec, images: np.ndarray, labels: np.ndarray, sizes: Sizes, dev: torch.device,
              amp: str, noise: NoiseConfig = TEACHER_NOISE, epochs: int = 2, **extra: Any):
    from noisystudent.engine import TrainJob

    tcfg = TrainConfig(epochs=epochs, batch_size=sizes.train_batch, lr=0.05, num_workers=sizes.workers, amp=amp,
                       ema_decay=extra.pop("ema_decay", None))
    mcfg = ModelConfig(name=spec.name, drop_rate=spec.drop_rate, drop_path_rate=spec.drop_path_rate, noise=noise)
    return TrainJob(spec=spec, model_cfg=mcfg, train_cfg=tcfg, labeled=array_source(images, labels), out_dir=out,
                    device=str(dev), progress=False, **extra)


def last_epoch_rate(out: Path) -> float:
    return history_rate(out, "last")


def bare_train(spec: ModelSpec, images: np.ndarray, labels: np.ndarray, sizes: Sizes, dev: torch.device,
               amp_dtype: Optional[torch.dtype], noise: NoiseConfig = TEACHER_NOISE,
               teacher: Optional[torch.nn.Module] = None) -> float:
    """:func:`bench.bare.train` as :func:`train_job` trains: its batch, loader workers, optimizer and autocast,
    two epochs, the last one's images/s; with ``teacher`` Hinton KD (T = 4, alpha = 0.9)."""
    return bare.train(spec, noise, images, labels, dev, batch_size=sizes.train_batch, epochs=2, workers=sizes.workers,
                      amp_dtype=amp_dtype, teacher=teacher)


def ceiling_train(spec: ModelSpec, sizes: Sizes, dev: torch.device, amp_dtype: Optional[torch.dtype],
                  channels_last: bool = False) -> float:
    """The bare step on GPU-resident tensors: what the GPU can do with no data loading at all."""
    return bare.ceiling_train(spec, sizes.train_batch, sizes.ceiling_steps, dev, amp_dtype, channels_last)


def training(sizes: Sizes, dev: torch.device, scratch: Path) -> None:
    from noisystudent.engine import TrainHooks, resolve_amp, run_training

    auto = resolve_amp("auto", dev)
    auto_name = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[auto]
    n = sizes.train_batch * sizes.train_steps
    counter = iter(range(10_000))

    def fresh(prefix: str) -> Path:
        return scratch / f"{prefix}-{next(counter)}"

    for name, size, ch in TRAIN_MODELS[: 1 if sizes is QUICK else None]:
        spec = spec_of(name, size, ch)
        images = images_for(n, size, ch, seed=1)
        labels = np.random.default_rng(1).integers(0, len(CLASSES), n)
        tag = f"{name} {size}x{size}x{ch} b{sizes.train_batch} w{sizes.workers}"
        for amp, noise, noise_name in (("auto", TEACHER_NOISE, "RandAugment n2 m9, flip, crop"), ("off", TEACHER_NOISE, "RandAugment n2 m9, flip, crop"),
                                       ("auto", CLEAN, "no augmentation")):
            dtype = resolve_amp(amp, dev)

            @check(f"run_training {name} amp={amp} {'noised' if noise is TEACHER_NOISE else 'clean'}")
            def _():
                metrics: dict[str, Any] = {}

                def ours() -> float:
                    out = fresh("ours")
                    metrics.update(run_training(train_job(out, spec, images, labels, sizes, dev, amp, noise=noise)))
                    return last_epoch_rate(out)

                med = medians(interleave(sizes.repeats, {
                    "ours": ours, "bare": lambda: bare_train(spec, images, labels, sizes, dev, dtype, noise=noise)}))
                assert metrics["amp"] == (auto_name if amp == "auto" else "off"), metrics["amp"]
                add_row("training", f"{tag} run_training amp={amp} ({metrics['amp']}) vs bare", med["ours"], med["bare"], noise_name)
                return {"amp_recorded": metrics["amp"], "images_per_s": med}

        @check(f"ceiling {name}")
        def _():
            out = {}
            variants = [("fp32", None, False)]
            if auto is not None:
                variants += [(auto_name, auto, False), (f"{auto_name}+channels_last", auto, True)]
            for label, dtype, cl in variants:
                out[label] = ceiling_train(spec, sizes, dev, dtype, channels_last=cl)
                add_row("training", f"{tag} ceiling: bare step, GPU-resident, {label}", out[label], None, "no data loading")
            return {"images_per_s": out}

    # correctness of the other CUDA paths, on the first model
    name, size, ch = TRAIN_MODELS[0]
    images = images_for(n, size, ch, seed=2)
    labels = np.random.default_rng(2).integers(0, len(CLASSES), n)

    @check("online teacher (distillation engine): hinton and fitnet vs supervised vs bare KD loop")
    def _():
        from noisystudent.distill import resolve_method_config

        spec = spec_of(name, size, ch)
        tpath = random_teacher(scratch, spec_of("resnet26", size, ch))
        teacher = bare.load_teacher(tpath, dev)
        methods = {m: resolve_method_config({"name": m}, "method") for m in ("hinton", "fitnet")}
        found: dict[str, Any] = {}

        def ours(method: Optional[str]) -> Callable[[], float]:
            def run() -> float:
                out = fresh(f"online-{method}")
                extra = {"method": methods[method], "teacher_ckpt": str(tpath)} if method else {}
                m = run_training(train_job(out, spec, images, labels, sizes, dev, "auto", noise=CLEAN, **extra))
                found[method or "supervised"] = {"amp": m["amp"], **{k: v for k, v in m.items() if "fidelity" in k or k == "method"}}
                return last_epoch_rate(out)
            return run

        med = medians(interleave(sizes.repeats, {
            "hinton": ours("hinton"), "fitnet": ours("fitnet"), "supervised": ours(None),
            "bare_kd": lambda: bare_train(spec, images, labels, sizes, dev, auto, noise=CLEAN, teacher=teacher),
            "bare": lambda: bare_train(spec, images, labels, sizes, dev, auto, noise=CLEAN),
        }))
        tag = f"{name} <- resnet26 teacher, no augmentation, {auto_name}"
        add_row("online", f"{tag}: run_training hinton (online) vs bare KD loop", med["hinton"], med["bare_kd"], "")
        add_row("online", f"{tag}: run_training fitnet (online) vs bare KD loop", med["fitnet"], med["bare_kd"], "features + regressor")
        add_row("online", f"{tag}: run_training supervised vs bare loop", med["supervised"], med["bare"], "same data, no teacher")
        return {"images_per_s": med, "metrics": found}

    @check("run_training amp=fp16 (GradScaler)")
    def _():
        out = fresh("fp16")
        m = run_training(train_job(out, spec_of(name, size, ch), images, labels, sizes, dev, "fp16"))
        import pandas as pd

        hist = pd.read_csv(out / "history.csv")
        assert m["amp"] == "fp16" and np.isfinite(hist["train_loss"]).all()
        add_row("training", f"{name} run_training amp=fp16 + GradScaler", last_epoch_rate(out), None, "")
        return {"train_loss": hist["train_loss"].tolist()}

    @check("student job: soft pseudo-labels, drop path, EMA, evaluate on device")
    def _():
        from noisystudent.engine import PseudoLabeledSet

        rng = np.random.default_rng(3)
        unl = array_source(images_for(n, size, ch, seed=3))
        targets = rng.dirichlet(np.ones(len(CLASSES)) * 0.3, n).astype(np.float32)
        pseudo = PseudoLabeledSet(unl, targets, np.ones(n, dtype=np.int64))
        test = array_source(images_for(max(256, sizes.train_batch), size, ch, seed=4),
                            rng.integers(0, len(CLASSES), max(256, sizes.train_batch)))
        student = StudentConfig(ratio=1.0, loss="soft", finetune_epochs=1)
        out = fresh("student")
        spec = spec_of(name, size, ch, drop_rate=0.2, drop_path_rate=0.1)
        m = run_training(train_job(out, spec, images, labels, sizes, dev, "auto", epochs=1, ema_decay=0.99,
                                   test=test, pseudo=pseudo, student=student, role="student", generation=1))
        assert (out / "model.pt").is_file() and 0.0 <= m["test_acc"] <= 1.0
        add_row("training", f"{name} student job (labeled+pseudo, EMA, fine-tune)", m["images_per_s"], None, m["amp"])
        return {"amp": m["amp"], "test_acc": m["test_acc"], "images_per_s": m["images_per_s"]}

    @check("torch.set_rng_state refuses a state mapped to the device (why resume needs .cpu())")
    def _():
        state = torch.get_rng_state().to(dev)
        try:
            torch.set_rng_state(state)
        except (TypeError, RuntimeError) as exc:
            return {"refused": True, "message": f"{type(exc).__name__}: {exc}"}
        return {"refused": False}

    @check("resume from last.pt after an injected failure")
    def _():
        out = fresh("resume")
        spec = spec_of(name, size, ch)
        try:
            run_training(train_job(out, spec, images, labels, sizes, dev, "auto"), TrainHooks(fail_at_epoch=1))
        except RuntimeError as exc:
            assert "injected" in str(exc), exc
        assert (out / "last.pt").is_file()
        m = run_training(train_job(out, spec, images, labels, sizes, dev, "auto"), TrainHooks(fail_at_epoch=1))
        import pandas as pd

        assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2]
        return {"amp": m["amp"]}


# --------------------------------------------------------------------------------------------------
# 2b. every distillation method, the teaching modes, STPM (what came after the first GPU check)

#: the online methods run against the bare Hinton-KD loop; dml and one have no teacher (peers, branches)
METHODS = ["hinton", "fitnet", "at", "fsp", "sp", "rkd", "bss", "dml", "one"]
TEACHING = [("fixed", None), ("independent", None), ("consistent", None), ("function_matching", None),
            ("function_matching", 32)]


def _history(out: Path):
    import pandas as pd

    return pd.read_csv(out / "history.csv")


def _finite_history(out: Path) -> dict[str, list[float]]:
    """Every loss column of ``history.csv``, asserted finite (a NaN/inf under autocast is the bug to catch)."""
    hist = _history(out)
    cols = [c for c in hist.columns if c == "train_loss" or c.startswith("loss")]
    bad = [c for c in cols if not np.isfinite(hist[c].to_numpy(dtype=float)).all()]
    assert not bad, f"non-finite {bad} in {out / 'history.csv'}: {hist[bad].to_dict('list')}"
    return {c: [round(float(v), 4) for v in hist[c]] for c in cols}


def methods(sizes: Sizes, dev: torch.device, scratch: Path) -> None:
    """Each registered method online under the auto dtype (throughput and finite losses) and under fp16 with
    the GradScaler (finite losses); Beyer et al.'s teaching modes, with a teacher at a larger input size;
    STPM training and its detector in fp16 against fp32."""
    from noisystudent.checkpoint import load_checkpoint
    from noisystudent.config import TeachingConfig
    from noisystudent.distill import list_methods, resolve_method_config
    from noisystudent.engine import resolve_amp, run_training

    auto = resolve_amp("auto", dev)
    auto_name = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[auto]
    name, size, ch = TRAIN_MODELS[0]
    n = sizes.train_batch * sizes.train_steps
    images = images_for(n, size, ch, seed=6)
    labels = np.random.default_rng(6).integers(0, len(CLASSES), n)
    n_test = max(256, sizes.train_batch)
    test = array_source(images_for(n_test, size, ch, seed=7), np.random.default_rng(7).integers(0, len(CLASSES), n_test))
    spec = spec_of(name, size, ch)

    def teacher(arch: str, side: int) -> str:
        return str(random_teacher(scratch, spec_of(arch, side, ch)))

    counter = iter(range(10_000))
    missing = sorted(set(list_methods()) - set(METHODS) - {"supervised", "noisy_student", "stpm"})
    if missing:
        print(f"  note: methods not in gpu_check.METHODS: {missing}", flush=True)

    def job(method: Optional[str], amp: str, epochs: int = 2, noise: NoiseConfig = CLEAN, teaching: Any = None,
            arch: str = "resnet26", side: int = size, params: Optional[dict] = None):
        out = scratch / f"method-{method}-{amp}-{next(counter)}"
        extra: dict[str, Any] = {"test": test, "teacher_ckpt": teacher(arch, side)}
        if method:
            extra["method"] = resolve_method_config({"name": method, **(params or {})}, "method")
        if teaching is not None:
            extra["teaching"] = teaching
        return out, train_job(out, spec, images, labels, sizes, dev, amp, noise=noise, epochs=epochs, **extra)

    base: dict[str, float] = {}

    @check("bare loops for the method rows (KD with a resnet26 teacher, plain)")
    def _():
        t = bare.load_teacher(teacher("resnet26", size), dev)
        base["kd"] = bare_train(spec, images, labels, sizes, dev, auto, noise=CLEAN, teacher=t)
        base["plain"] = bare_train(spec, images, labels, sizes, dev, auto, noise=CLEAN)
        base["kd_noised"] = bare_train(spec, images, labels, sizes, dev, auto, noise=TEACHER_NOISE, teacher=t)
        return {"images_per_s": base}

    for method in METHODS:

        @check(f"method {method} online, amp=auto ({auto_name})")
        def _():
            out, j = job(method, "auto")
            m = run_training(j)
            losses = _finite_history(out)
            assert m["method"] == method and m["amp"] == auto_name, (m["method"], m["amp"])
            assert (out / "model.pt").is_file()
            exported = load_checkpoint(out / "model.pt").spec.name
            ours = last_epoch_rate(out)
            teacherless = method in ("dml", "one")
            baseline = base.get("plain" if teacherless else "kd")
            add_row("methods", f"{name} <- resnet26, {method} ({auto_name}) vs bare {'loop' if teacherless else 'KD loop'}",
                    ours, baseline, f"exports {exported}")
            return {"losses": losses, "test_acc": m.get("test_acc"), "test_fidelity": m.get("test_fidelity"),
                    "exported": exported, "images_per_s": ours}

        @check(f"method {method} online, amp=fp16 (GradScaler)")
        def _():
            out, j = job(method, "fp16", epochs=1)
            m = run_training(j)
            assert m["amp"] == "fp16", m["amp"]
            return {"losses": _finite_history(out)}

    for mode, tsize in TEACHING:
        label = mode + (f", teacher at {tsize}px" if tsize else "")

        @check(f"teaching {label} (hinton, RandAugment)")
        def _():
            side = tsize or size
            out, j = job("hinton", "auto", noise=TEACHER_NOISE, side=side,
                         teaching=TeachingConfig(mode=mode, teacher_image_size=tsize))
            m = run_training(j)
            losses = _finite_history(out)
            ours = last_epoch_rate(out)
            add_row("teaching", f"{name} <- resnet26, hinton@{label} ({auto_name}) vs bare KD loop (teacher on the student's view)",
                    ours, base.get("kd_noised"), "RandAugment n2 m9, flip, crop")
            return {"losses": losses, "test_fidelity": m.get("test_fidelity"), "images_per_s": ours}

    @check("stpm: train on CUDA, detector fp16 vs fp32 scores")
    def _():
        from noisystudent.anomaly.detector import Detector

        out, j = job("stpm", "auto", arch=name)
        run_training(j)
        losses = _finite_history(out)
        ours = last_epoch_rate(out)
        add_row("methods", f"{name} <- {name}, stpm ({auto_name}) vs bare KD loop (resnet26 teacher)", ours, base.get("kd"), "")
        t_ckpt, s_ckpt = load_checkpoint(teacher(name, size)), load_checkpoint(out / "model.pt")
        det = Detector(t_ckpt, s_ckpt, stages=[0, 1, 2], device=dev)
        ref = Detector(t_ckpt, s_ckpt, stages=[0, 1, 2], device="cpu")
        tf = det.transform()
        x = torch.stack([tf(im) for im in test.images[:256]])
        s16, m16 = det.score(x)
        s32, m32 = ref.score(x)
        r16, r32 = np.argsort(np.argsort(s16)), np.argsort(np.argsort(s32))
        spearman = float(np.corrcoef(r16, r32)[0, 1])
        rel = float(np.abs(s16 - s32).max() / max(np.abs(s32).max(), 1e-12))
        assert np.isfinite(m16).all() and (m16 >= 0).all(), "fp16 maps not finite or negative"
        assert spearman > 0.99, f"fp16 detector ranks images differently from fp32 (Spearman {spearman:.4f})"
        xb = torch.cat([x] * max(1, 4096 // len(x)))
        det.score(xb)
        r = rate(lambda: (det.score(xb), len(xb))[1], dev)
        add_row("methods", f"{name} STPM detector score (fp16 on {dev.type}), maps back to host", r, None, "")
        return {"losses": losses, "score_spearman_fp16_vs_fp32": spearman, "max_rel_score_diff": rel,
                "detector_images_per_s": r, "half": det.half}


# --------------------------------------------------------------------------------------------------
# 2c. the labeling worker on a streaming source (what Ray Data runs per partition), shards written


def streaming(sizes: Sizes, dev: torch.device, scratch: Path) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from bench.sources import SyntheticStream
    from noisystudent.data.streaming import StreamSource
    from pseudo_labels.labeling import Labeler, _write_chunk
    from pseudo_labels.schema import LabelMetadata
    from pseudo_labels.sharded import PartitionWorker
    from pseudo_labels.store import list_shards, read_rejected

    name, size, ch = "resnet26", 28, 1
    spec = spec_of(name, size, ch)
    ckpt = random_checkpoint(spec, "gpu-check-stream")
    meta = LabelMetadata(class_names=list(CLASSES), num_classes=len(CLASSES), topk=3, teachers=[ckpt.checkpoint_id])
    bs = sizes.label_batch
    n = bs * sizes.label_batches

    def worker(reader, out: Path, threads: int) -> PartitionWorker:
        out.mkdir(parents=True, exist_ok=True)
        kwargs = dict(teachers=[ckpt], temperature=1.0, topk=3, device=dev.type, decode_threads=threads)
        return PartitionWorker(Labeler, kwargs, reader, _write_chunk(out, meta), batch_size=bs)

    def rows_in(out: Path) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in list_shards(out))

    @check("streaming labeling worker: SyntheticStream partitions -> Parquet shards")
    def _():
        src = SyntheticStream(n, partition_size=max(bs, n // 4), image_size=size, in_chans=ch)
        parts = np.arange(src.num_partitions)
        res = {}
        for threads in (1, 8):
            out = scratch / f"stream-syn-{threads}"
            w = worker(src, out, threads)
            w({"partition": parts[:1]})  # warm-up (cuDNN, threads); rewritten below, atomically
            t0 = time.perf_counter()
            got = w({"partition": parts})
            sync(dev)
            res[threads] = n / (time.perf_counter() - t0)
            assert int(got["images"].sum()) == n and rows_in(out) == n, (got, rows_in(out))
            add_row("streaming", f"{name} {size}px, labeling worker, SyntheticStream, {threads} decode thread(s)",
                    res[threads], None, "generate+transform+fp16 fwd+shard write")
        return {"images_per_s": res}

    @check("streaming labeling worker: parquet_bytes PNG shards with one corrupt image")
    def _():
        folder = scratch / "pq-bytes"
        folder.mkdir()
        imgs = images_for(n, size, ch, seed=8)
        blobs = []
        for im in imgs:
            buf = io.BytesIO()
            Image.fromarray(im[..., 0]).save(buf, format="PNG")
            blobs.append(buf.getvalue())
        blobs[5] = b"not a png"
        half = n // 2
        for k, (lo, hi) in enumerate(((0, half), (half, n))):
            pq.write_table(pa.table({"image_id": [f"img-{i:06d}" for i in range(lo, hi)], "image": blobs[lo:hi]}),
                           folder / f"part-{k}.parquet")
        src = StreamSource("parquet_bytes", folder, in_chans=ch)
        out = scratch / "stream-pq"
        w = worker(src, out, 8)
        t0 = time.perf_counter()
        got = w({"partition": np.arange(src.num_partitions)})
        sync(dev)
        r = n / (time.perf_counter() - t0)
        rejected = [rid for f in list_shards(out) for rid, _ in read_rejected(f)]
        assert int(got["rejected"].sum()) == 1 and rejected == ["img-000005"], (got, rejected)
        assert rows_in(out) == n - 1
        add_row("streaming", f"{name} {size}px, labeling worker, parquet_bytes PNG, 8 decode threads", r, None,
                "read+PNG decode+transform+fp16 fwd+shard write")
        return {"images_per_s": r, "rejected": rejected}


# --------------------------------------------------------------------------------------------------
# 3. DDP, world size 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp(sizes: Sizes, dev: torch.device, scratch: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from noisystudent.engine import TrainHooks, run_training

    backend = "nccl" if dev.type == "cuda" else "gloo"
    name, size, ch = TRAIN_MODELS[0]
    n = sizes.train_batch * sizes.train_steps
    images = images_for(n, size, ch, seed=5)
    labels = np.random.default_rng(5).integers(0, len(CLASSES), n)
    spec = spec_of(name, size, ch)

    @check(f"DDP world size 1, {backend}")
    def _():
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        try:
            t = torch.ones(4, device=dev)
            dist.all_reduce(t)
            assert t.tolist() == [1.0] * 4

            def prepare_model(m: torch.nn.Module) -> torch.nn.Module:
                return DDP(m, device_ids=[dev.index or 0] if dev.type == "cuda" else None)

            # as pipelines.train_ray builds them: the loaders shard by rank themselves (ShuffleSampler), so
            # prepare_data_loader(add_dist_sampler=False) leaves them as they are
            hooks = lambda: TrainHooks(prepare_model=prepare_model, rank=0, world_size=1)  # noqa: E731
            metrics: dict[str, Any] = {}
            counter = iter(range(10_000))

            def run(kind: str) -> Callable[[], float]:
                def go() -> float:
                    out = scratch / f"ddp-{kind}-{next(counter)}"
                    metrics.update(run_training(train_job(out, spec, images, labels, sizes, dev, "auto"),
                                                hooks() if kind == "ddp" else None))
                    return last_epoch_rate(out)
                return go

            med = medians(interleave(sizes.repeats, {"ddp": run("ddp"), "plain": run("plain")}))
            add_row("ddp", f"{name} run_training in DDP ({backend}, world 1) vs without", med["ddp"], med["plain"], metrics["amp"])
            return {"backend": backend, "images_per_s": med, "amp": metrics["amp"]}
        finally:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    p.add_argument("--sections", default="labeling,training,methods,streaming,ddp",
                   help="comma-separated: labeling,training,methods,streaming,ddp")
    p.add_argument("--only", action="append", default=[], help="run only checks whose name contains this (repeatable)")
    p.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json or bench/results/gpu_check.json)")
    args = p.parse_args(argv)

    dev = resolve_device(args.device)
    sizes = QUICK if args.quick else FULL
    if dev.type == "cpu" and not args.quick:
        sizes = dataclasses.replace(FULL, workers=min(FULL.workers, max(0, (os.cpu_count() or 1) - 1)))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    ONLY.extend(args.only)
    out_path = results_path("gpu_check.json", args.out)
    quiet_warnings(r".*has no validation data.*")  # and dml's "no validation data" export note
    env = environment(dev)
    print(json.dumps(env, indent=1), flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        scratch = Path(tmp)
        if "labeling" in sections:
            labeling(sizes, dev)
        if "training" in sections:
            training(sizes, dev, scratch)
        if "methods" in sections:
            methods(sizes, dev, scratch)
        if "streaming" in sections:
            streaming(sizes, dev, scratch)
        if "ddp" in sections:
            ddp(sizes, dev, scratch)
    seconds = time.perf_counter() - t0

    print()
    print(row_table(ROWS))
    failed = [c for c in CHECKS if not c["ok"]]
    print(f"\n{len(CHECKS) - len(failed)}/{len(CHECKS)} checks ok in {seconds:.0f} s")
    for c in failed:
        print(f"FAILED {c['name']}: {c['error']}")
        print("   " + "\n   ".join(c["traceback"]))
    result = {"environment": env, "sizes": dataclasses.asdict(sizes), "quick": args.quick, "sections": sections,
              "seconds": round(seconds, 1), "rows": ROWS, "checks": CHECKS,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_results(out_path, result)
    print(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
