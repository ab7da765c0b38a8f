"""The online teacher's cost: a distillation step of ``run_training`` against a bare PyTorch loop.

What is compared. *Ours* is :func:`noisystudent.engine.run_training` with ``method: {name: hinton}``
(defaults T = 4, alpha = 0.9) and ``teacher_ckpt`` a ResNet-26 checkpoint, so every step runs the frozen
teacher on the student's batch (:class:`noisystudent.distill.teacher.OnlineTeacher`). The student is set
up exactly as in the ``teacher`` rows (:mod:`bench.throughput`): the config's teacher model (ResNet-14,
dropout 0.2) with the config's noise, batch 64, a fixed number of steps, one epoch, no evaluation.
*Bare* is the loop anyone would write by hand: the same student, transform, ``DataLoader`` and optimizer
as :func:`bench.throughput.bare_train`, plus the teacher rebuilt from the same checkpoint file
(``create_model`` + ``load_state_dict``, eval mode, ``requires_grad`` off), run under ``torch.no_grad()``
on the same batch, and the same loss written out:
``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``. On a GPU both autocast
to the same dtype (``train.amp: auto``).

The teacher has random weights whose BatchNorm statistics are set by a few forward passes over the
labeled images (no optimizer step): its cost does not depend on what it learned, and calibrated
statistics keep its logits, hence the loss, in a sane range. It is written once per bench run with
:func:`noisystudent.checkpoint.save_checkpoint` into the bench's scratch folder.

The same rounds also time the bare loop *without* the teacher (:func:`bench.throughput.bare_train`),
which tells what the teacher's forward pass itself costs (``teacher_cost_fraction_of_bare_step``).
What is timed is the same span as in the ``teacher`` rows: the epoch loop (``history.csv``) for ours,
first batch to last step for bare.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from . import bare
from .harness import Row, Stopwatch, history_rate, interleave, median, paired_ratio, scratch_dir
from .suite import Sizes
from .throughput import BATCH_SIZE, bare_train, teacher_job

TEACHER_MODEL = "resnet26"
METHOD = {"name": "hinton"}
#: measurements per round: ours, bare with the teacher, bare without it
MEASUREMENTS = 3


def make_teacher_checkpoint(cfg: Any, bundle: Any, images: np.ndarray, path: Path, batches: int = 8) -> Path:
    """Write a ResNet-26 ``model.pt`` for the data set of ``cfg``: random weights, BatchNorm statistics
    from ``batches`` forward passes in train mode over clean labeled images (no optimizer step)."""
    import torch

    from noisystudent.checkpoint import ModelSpec, save_checkpoint
    from noisystudent.transforms import create_transform

    d = cfg.data
    spec = ModelSpec(name=TEACHER_MODEL, num_classes=len(bundle.classes), in_chans=d.in_chans,
                     image_size=d.image_size, mean=list(d.mean), std=list(d.std), classes=list(bundle.classes))
    torch.manual_seed(1)
    model = spec.build(inference=True).train()
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for _ in range(batches):
            idx = rng.choice(len(images), size=min(BATCH_SIZE, len(images)), replace=False)
            model(torch.stack([tf(images[i]) for i in idx]))
    save_checkpoint(path, model.eval(), spec, role="teacher")
    return path


def _amp_dtype(device: str):
    """What ``train.amp: auto`` gives ``run_training`` on this device (None on a CPU)."""
    import torch

    if device != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def online_job(cfg: Any, bundle: Any, steps: int, out_dir: Path, device: str, teacher_path: Path) -> Any:
    """The ``teacher`` rows' job (config's noise) as a student of ``teacher_path`` by ``hinton``."""
    job = teacher_job(cfg, bundle, cfg.teacher.noise, steps, out_dir, device)
    return dataclasses.replace(job, method=dict(METHOD), teacher_ckpt=str(teacher_path), role="student")


def planned_runs(sizes: Sizes) -> int:
    """How many measurements :func:`bench_online` makes on one device (for the progress bar)."""
    return MEASUREMENTS * sizes.repeats


def bench_online(cfg: Any, bundle: Any, sizes: Sizes, threads: int, device: str, bar: Any = None) -> list[Row]:
    """One row: ``run_training`` with ``hinton`` and an online ResNet-26 teacher vs the bare loop."""
    from noisystudent.distill import resolve_method_config
    from noisystudent.engine import run_training

    images = bundle.labeled.load_all()
    labels = np.asarray(bundle.labeled.labels)
    steps = sizes.train_steps
    noise = cfg.teacher.noise
    params = resolve_method_config(dict(METHOD), "method")
    teacher_path = make_teacher_checkpoint(cfg, bundle, images, scratch_dir("online-teacher") / "model.pt")
    spec = online_job(cfg, bundle, steps, Path("."), device, teacher_path).spec
    walls: list[float] = []

    def ours() -> float:
        out = scratch_dir("online")
        job = online_job(cfg, bundle, steps, out, device, teacher_path)
        with Stopwatch() as sw:
            run_training(job)
        walls.append(sw.seconds)
        return history_rate(out)

    teacher = bare.load_teacher(teacher_path, device)

    def baseline() -> float:
        return bare_train(spec, noise, images, labels, cfg.teacher_train, steps, device, teacher=teacher,
                          temperature=params["temperature"], alpha=params["alpha"], amp_dtype=_amp_dtype(device),
                          label_smoothing=cfg.teacher_train.label_smoothing)

    def bare_no_teacher() -> float:
        return bare_train(spec, noise, images, labels, cfg.teacher_train, steps, device)

    got = interleave(sizes.repeats, {"ours": ours, "bare": baseline, "bare-no-teacher": bare_no_teacher}, bar)
    o, b, b0 = got["ours"], got["bare"], got["bare-no-teacher"]
    cost = 1 - median(b) / median(b0) if median(b0) else float("nan")
    return [Row(
        section="online" + ("" if device == "cpu" else f" ({device})"),
        name=f"hinton: {cfg.teacher.name} student + {TEACHER_MODEL} online teacher",
        ours=median(o), bare=median(b), ratio=paired_ratio(o, b),
        images=steps * BATCH_SIZE, repeats=len(o), threads=f"{threads}/{threads}",
        note=f"loop only; call {median(walls):.1f} s; teacher fwd {cost:.0%} of bare step",
        samples={"ours": o, "bare": b, "bare_no_teacher": b0, "ours_call_seconds": walls},
        extra={"steps": steps, "batch_size": BATCH_SIZE, "labeled_images": len(images), "device": device,
               "student": cfg.teacher.name, "teacher": TEACHER_MODEL, "method": params,
               "amp": str(_amp_dtype(device)).replace("torch.", ""),
               "bare_no_teacher_images_per_s": median(b0),
               "teacher_cost_fraction_of_bare_step": round(cost, 3),
               "timed": "ours: history.csv images_per_s (epoch loop); bare: first batch to last step"},
    )]
