"""The end of a job: final evaluation (accuracy and fidelity to the teacher) and its artifacts.

``history.csv``, ``metrics.json`` and ``model.pt`` are written atomically, ``model.pt`` last, so its
presence means the job finished; ``last.pt`` is then removed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch

from ..checkpoint import Checkpoint, ModelSpec, checkpoint_id, load_checkpoint, save_checkpoint
from ..io import write_json, write_text
from ..transforms import create_transform
from .setup import Training


def teacher_eval_transform(tr: Training, teacher: Checkpoint) -> Optional[Callable]:
    """The clean view the teacher is compared on for fidelity (None: the student's own).

    An online teacher saw the student's normalisation at its teaching size (``teacher_image_size``, by
    default its checkpoint's); an offline one labeled the images with its own eval transform."""
    s = tr.job.spec
    if tr.trainee.teacher is not None:
        size = tr.trainee.teaching.teacher_size
        return None if size == s.image_size else create_transform(size, s.in_chans, s.mean, s.std, None)
    t = teacher.spec
    if (t.image_size, t.in_chans, list(t.mean), list(t.std)) == (s.image_size, s.in_chans, list(s.mean), list(s.std)):
        return None
    return create_transform(t.image_size, t.in_chans, t.mean, t.std, None)


def job_metrics(tr: Training, seconds: float) -> dict[str, Any]:
    """The job's metrics before evaluation: what ran, how long, how fast."""
    job, history = tr.job, tr.state.history
    return {
        "role": job.role,
        "generation": job.generation,
        "model": job.spec.name,
        "method": tr.trainee.method_cfg["name"],
        "method_params": {k: v for k, v in tr.trainee.method_cfg.items() if k != "name"},
        "epochs": tr.total_epochs,
        "steps": tr.plan.total,
        "steps_source": tr.plan.source,
        "train_seconds": sum(r["seconds"] for r in history),
        "images_per_s": float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
        "labeled_images": len(job.labeled),
        "pseudo_labeled_images": tr.data.n_pseudo if tr.trainee.use_pseudo else 0,
        "wall_seconds_this_session": seconds,
        "amp": tr.precision.label,
        "teaching": tr.trainee.teaching.mode if tr.trainee.teacher is not None else None,
    }


def final_evaluation(tr: Training, final: torch.nn.Module, spec: ModelSpec, done: dict) -> dict[str, Any]:
    """Validation and test accuracy of the exported model (``done``: evaluations already made), test
    metrics by class, and fidelity to the teacher when the job has one."""
    job, metrics = tr.job, {}
    if job.val is not None:
        val = done.get("val_acc") or tr.evaluator.evaluate(final, job.val, spec.classes)
        metrics.update({"val_acc": val["top1"], "val_images": len(job.val)})
    if job.test is not None:
        test = done.get("test_acc") or tr.evaluator.evaluate(final, job.test, spec.classes,
                                                             progress=job.progress and job.step_bars)
        metrics.update({f"test_{k}" if k != "top1" else "test_acc": v for k, v in test.items()})
        if job.teacher_ckpt:
            from ..distill.fidelity import fidelity

            teacher = tr.trainee.teacher.checkpoint if tr.trainee.teacher is not None else load_checkpoint(job.teacher_ckpt)
            if job.teachers and tr.trainee.teacher is not None:
                teacher = tr.trainee.teacher  # an ensemble: fidelity to its mixture (it builds as one model)
            metrics.update(fidelity(final, teacher, job.test, tr.evaluator.transform, device=tr.device,
                                    teacher_transform=teacher_eval_transform(tr, teacher)))
    return metrics


def finish(tr: Training, seconds: float) -> dict[str, Any]:
    """Final evaluation and the job's artifacts (on the main worker), ``model.pt`` last; returns the metrics."""
    job = tr.job
    out = Path(job.out_dir)
    metrics = job_metrics(tr, seconds)
    if tr.hooks.is_main:
        final, spec, done = export(tr, metrics)  # done: the exported model's evaluations, when export made them
        metrics.update(final_evaluation(tr, final, spec, done))
        metrics["checkpoint_id"] = checkpoint_id(final, job.generation, job.role)
        if spec.name != job.spec.name:
            metrics["model"] = spec.name  # the method exported another model (a cohort member, an ensemble)
        write_text(out / "history.csv", pd.DataFrame(tr.state.history).to_csv(index=False))
        write_json(out / "metrics.json", metrics)
        save_checkpoint(out / "model.pt", final, spec, metrics=metrics, config=job.config, generation=job.generation,
                        role=job.role)
        (out / "last.pt").unlink(missing_ok=True)
    return metrics


def _save_member(tr: Training, label: str, model: torch.nn.Module, spec: ModelSpec, m: dict) -> None:
    job = tr.job
    d = Path(job.out_dir) / "members" / label
    write_json(d / "metrics.json", {**m, "role": job.role, "generation": job.generation})
    save_checkpoint(d / "model.pt", model, spec, metrics=m, config=job.config, generation=job.generation, role=job.role)


def export(tr: Training, metrics: dict) -> tuple[torch.nn.Module, ModelSpec, dict[str, dict]]:
    """The model the job writes as ``model.pt``: the method's choice (:meth:`DistillMethod.export_model`),
    its spec, and its evaluations when they were made here (so :func:`finish` does not repeat them).

    The other full models a method trained (a DML cohort: :meth:`DistillMethod.members`) are evaluated
    and written first, each as ``members/<label>/model.pt`` with its ``metrics.json``, so every member is
    kept whichever one the job exports; ``metrics['members']`` lists them."""
    method = tr.state.final_core.method  # with EMA: the averaged members, branches, gate
    student, spec = tr.final_model, tr.job.spec
    members = method.members()
    member_metrics, evals = None, {}
    if members:
        evals[id(student)] = tr.evaluator.splits(student, tr.job, spec.classes)
        member_metrics = [{"label": "student", "model": spec.name,
                           **{k: v["top1"] for k, v in evals[id(student)].items()}}]
        for label, model, name in members:
            m_spec = dataclasses.replace(spec, name=name)
            evals[id(model)] = tr.evaluator.splits(model, tr.job, m_spec.classes)
            m = {"label": label, "model": name, **{k: v["top1"] for k, v in evals[id(model)].items()}}
            member_metrics.append(m)
            _save_member(tr, label, model, m_spec, m)
        metrics["members"] = member_metrics
    model, out_spec = method.export_model(student, spec, member_metrics)
    if model is not student:
        metrics["exported"] = out_spec.name
    return model, out_spec, evals.get(id(model), {})
