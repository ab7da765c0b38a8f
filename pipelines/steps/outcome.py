"""The steps that close a generation: ``evaluate`` gathers its figures into ``gen-G/metrics.json``;
``promote`` decides which model teaches the next one (``student.promote``, :mod:`pipelines.promotion`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from noisystudent.checkpoint import load_checkpoint
from noisystudent.data import DataBundle
from noisystudent.errors import PromotionWarning, UserError
from noisystudent.io import read_json, write_json

from .base import Outcome, Step, StepContext, log
from .data import load_data
from .lineage import model_name, promotion_fields, taught_by, warn
from .names import split_step
from .training import STUDENT

if TYPE_CHECKING:
    from pipelines.config import ExperimentConfig
    from pipelines.state import RunDir

GENERATION_RECORD = "metrics.json"


def _evaluate(ctx: StepContext) -> Outcome:
    """Gather generation ``g``'s figures into ``gen-g/metrics.json``: test accuracy, pseudo-label accuracy, timings."""
    run, cfg, g = ctx.run, ctx.cfg, ctx.g
    path = run.gen(g) / GENERATION_RECORD
    st = run.state().get("steps", {})
    student = read_json(run.student_dir(g) / "metrics.json")
    labels = read_json(run.labels_dir(g) / "summary.json")
    selected = read_json(run.selected_dir(g) / "summary.json")
    teacher_ckpt = run.teacher_of(g)  # the promoted model of g - 1: not always g - 1's own
    teacher_metrics = read_json(teacher_ckpt.parent / "metrics.json")
    out = {
        "generation": g,
        "model": cfg.student_model(g).name,
        "teacher_model": teacher_metrics.get("model"),
        "test_acc": student.get("test_acc"),
        "teacher_test_acc": teacher_metrics.get("test_acc"),
        "val_acc": student.get("val_acc"),
        "teacher_val_acc": teacher_metrics.get("val_acc"),
        "val_images": student.get("val_images"),
        **taught_by(run, g),
        **promotion_fields(run.state().get("promotions", {}).get(str(g))),
        "pseudo_label_acc": labels.get("pseudo_label_accuracy"),
        "pseudo_label_acc_selected": selected.get("accuracy_selected_weighted"),
        "pseudo_labels": labels.get("rows"),
        "rejected": labels.get("rejected"),
        "selected": selected.get("rows_selected"),
        "selected_weighted": selected.get("weighted_rows_selected"),
        "labeling_images_per_s": labels.get("throughput_images_per_s"),
        "student_images_per_s": student.get("images_per_s"),
        "seconds": {split_step(s)[1]: st[s]["seconds"] for s in st if split_step(s)[0] == g},
    }
    write_json(path, out)
    return Outcome(out, [path])


EVALUATE = Step("evaluate", _evaluate, lambda run, g: run.gen(g), GENERATION_RECORD, needs=(STUDENT,),
                missing="evaluated student", command="noisystudent student {root} --generation {g}")


def _val_correct(data: DataBundle, ckpt: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, right)``: the validation images that decoded and whether ``ckpt``'s top-1 is right on each,
    the model seeing its own eval view. What validation accuracy and the paired comparison are made of."""
    from noisystudent.evaluate import predict_probs
    from noisystudent.transforms import create_transform

    ck = load_checkpoint(ckpt, expected_classes=data.classes)
    spec = ck.spec
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    idx, probs = predict_probs(ck.build_model(), data.val, tf, progress=False, desc="validate")
    return idx, probs.argmax(1) == np.asarray(data.val.labels)[idx]


def _val_acc(cfg: "ExperimentConfig", ckpt: Path) -> tuple[Optional[float], int]:
    """Validation accuracy of a checkpoint and the number of validation images: from its metrics.json,
    else measured now (a model trained before validation was recorded); ``(None, 0)`` without validation."""
    mfile = ckpt.parent / "metrics.json"
    m = read_json(mfile) if mfile.is_file() else {}
    if m.get("val_acc") is not None:
        return float(m["val_acc"]), int(m.get("val_images") or 0)
    data = load_data(cfg)
    if data.val is None:
        return None, 0
    _, right = _val_correct(data, ckpt)
    return (float(right.mean()) if len(right) else 0.0), len(data.val)


def _val_discordance(cfg: "ExperimentConfig", student_ckpt: Path, teacher_ckpt: Path) -> Optional[tuple[int, int]]:
    """(validation images only the teacher gets right, images only the student gets right), each model on its
    own eval view; ``None`` without validation images. What :func:`pipelines.promotion.mcnemar_p` tests."""
    data = load_data(cfg)
    if data.val is None or len(data.val) == 0:
        return None
    ok = []
    for ckpt in (teacher_ckpt, student_ckpt):
        idx, right = _val_correct(data, ckpt)
        full = np.zeros(len(data.val), dtype=bool)  # an image that does not decode counts as wrong for both
        full[idx] = right
        ok.append(full)
    teacher_ok, student_ok = ok
    return int((teacher_ok & ~student_ok).sum()), int((student_ok & ~teacher_ok).sum())


def _decide(run: "RunDir", cfg: "ExperimentConfig", g: int, ckpt: Path) -> dict:
    """The promotion decision of generation ``g`` (student ``ckpt`` against the model that taught it)."""
    from pipelines.promotion import decide

    teacher = run.teacher_of(g)
    student_val, n_val = _val_acc(cfg, ckpt)
    policy = cfg.student.promote
    teacher_val, _ = _val_acc(cfg, teacher) if policy != "always" else (None, 0)
    discordant = None
    if (policy != "always" and student_val is not None and teacher_val is not None
            and student_val < teacher_val):  # what a refusal rests on, recorded whatever promote_alpha says
        discordant = _val_discordance(cfg, ckpt, teacher)
    return decide(cfg.student.promote, g, student_val, teacher_val, n_val, model_name(run, teacher)[1],
                  discordant=discordant, alpha=cfg.student.promote_alpha, margin=cfg.student.promote_margin)


def _promote(ctx: StepContext) -> Outcome:
    """Decide which model teaches generation ``g + 1`` and record it: ``state.json`` (``teachers``,
    ``promotions``) and ``gen-g/metrics.json``. The result is the decision."""
    run, g = ctx.run, ctx.g
    cfg = ctx.cfg or run.load_config()
    ckpt = run.student_dir(g) / "model.pt"
    if not ckpt.is_file():
        raise UserError(f"generation {g} has no student checkpoint to promote ({ckpt})")
    rec = _decide(run, cfg, g, ckpt)
    chosen = ckpt if rec["promoted"] == "student" else run.teacher_of(g)
    rec["next_teacher"] = str(chosen.parent.relative_to(run.root)) if model_name(run, chosen)[0] is not None else str(chosen)
    run.promote(g, chosen, rec)
    gm = run.gen(g) / GENERATION_RECORD
    if gm.is_file():
        write_json(gm, {**read_json(gm), **promotion_fields(rec)})
    log(f"[gen {g}] promotion ({rec['policy']}): {rec['reason']}")
    if rec["promoted"] == "teacher":
        warn(f"generation {g}: {rec['reason']}", PromotionWarning)
    return Outcome(rec, [chosen], {"promoted": rec["promoted"], "teacher_of_next": rec["next_teacher"]})


PROMOTE = Step("promote", _promote, lambda run, g: run.gen(g), needs=(STUDENT,), missing="promotion decision",
               command="noisystudent student {root} --generation {g}",
               finished=lambda run, g: run.state().get("promotions", {}).get(str(g), {}))
