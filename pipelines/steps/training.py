"""The steps that train a model: the generation-0 teacher, a generation's noised student, the
supervised-only baselines and a distilled student. Each builds one :class:`~noisystudent.engine.TrainJob`
and trains it as ``cfg.ray`` says (:func:`pipelines.train_ray.train`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from noisystudent.checkpoint import load_checkpoint
from noisystudent.config import to_dict
from noisystudent.errors import ConfigError, UserError
from noisystudent.engine import PseudoLabeledSet, TrainJob, spec_for

from pipelines.crossmodal import student_modality, with_modality_noise

from .base import Outcome, Step, StepContext, log
from .data import load_data, record_conditions
from .labeling import SELECT, pseudo_set
from .lineage import teacher_checkpoint
from .names import DISTILL, TEACHER, baseline_step

if TYPE_CHECKING:
    from pipelines.config import ExperimentConfig

MODEL_RECORD = "metrics.json"


def _train(ctx: StepContext, out: Path, *, model_cfg, train_cfg, labeled, test, classes, generation: int, role: str,
           job_cfg: Optional["ExperimentConfig"] = None, pseudo: Optional[PseudoLabeledSet] = None,
           method: Optional[dict] = None, teacher: Optional[Path] = None, val=None, teaching=None,
           teachers: Optional[list] = None, modality: Optional[str] = None, unlabeled=None,
           unlabeled_ratio: float = 0.0) -> Outcome:
    """Build one :class:`TrainJob` and train it as ``cfg.ray`` says; the model's files are the artifacts.

    ``method`` is the resolved distillation method (None: supervised, or noisy_student with ``pseudo``);
    ``teacher`` the checkpoint an online method runs and fidelity is measured against; ``val`` the
    validation images (val_acc in the job's history and metrics, what promotion compares); ``teaching``
    what an online teacher sees (``TeachingConfig``)."""
    from pipelines.crossmodal import modality_job_parts
    from pipelines.train_ray import train

    cfg = ctx.cfg
    # paired data (docs/crossmodal.md): every source read in the model's modality
    model_cfg, labeled, test, val, pseudo, unlabeled = modality_job_parts(cfg, model_cfg, modality, labeled, test, val,
                                                                          pseudo, unlabeled)
    init = model_cfg.init
    if init == "teacher":
        init = teacher
    # absolute: a Ray Train worker does not run in the driver's working directory
    init = str(Path(init).resolve()) if init else None
    job = TrainJob(
        spec=spec_for(model_cfg, cfg.data, classes, modality),
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        labeled=labeled,
        test=test,
        out_dir=out,
        pseudo=pseudo,
        student=cfg.student if pseudo is not None else None,
        seed=cfg.seed + generation,
        device=cfg.device,
        generation=generation,
        role=role,
        config=to_dict(job_cfg or cfg),
        progress=ctx.progress,
        method=method,
        teacher_ckpt=str(Path(teacher).resolve()) if teacher is not None else None,
        val=val,
        teaching=teaching,
        init_ckpt=init,
        teachers=teachers,
        unlabeled=unlabeled,
        unlabeled_ratio=unlabeled_ratio,
        teacher_modality=cfg.teacher.modality if role == "distill" else None,
    )
    metrics = train(job, cfg.ray)
    return Outcome(metrics, [out / "model.pt", out / "metrics.json", out / "history.csv"],
                   {"test_acc": metrics.get("test_acc"), "model": model_cfg.name})


def _teacher(ctx: StepContext) -> Outcome:
    """Train the generation-0 teacher on the labeled images only."""
    cfg = ctx.cfg
    data = load_data(cfg)
    record_conditions(ctx.run, data)
    held = f" ({len(data.val)} more held out for validation)" if data.val is not None else " (no validation split)"
    log(f"[gen 0] teacher {cfg.teacher.name} on {len(data.labeled)} labeled images{held}")
    return _train(ctx, ctx.run.teacher_dir(), model_cfg=cfg.teacher, train_cfg=cfg.teacher_train, labeled=data.labeled,
                  test=data.test, classes=data.classes, generation=0, role="teacher", val=data.val,
                  modality=cfg.teacher.modality)


TEACHER_STEP = Step(TEACHER, _teacher, lambda run, g: run.teacher_dir(), MODEL_RECORD,
                    missing="trained teacher", command="noisystudent teacher {config} --run-dir {root}")


def _student(ctx: StepContext) -> Outcome:
    """Train generation ``g``'s noised student on labeled + selected pseudo-labeled images."""
    cfg, g = ctx.cfg, ctx.g
    data = load_data(cfg)
    model_cfg = cfg.student_model(g)
    model_cfg = with_modality_noise(cfg, model_cfg, student_modality(cfg, model_cfg))  # what the log shows trains
    pseudo = pseudo_set(ctx.run, cfg, g)
    log(f"[gen {g}] student {model_cfg.name} (drop {model_cfg.drop_rate}, drop path {model_cfg.drop_path_rate}, "
        f"RandAugment n={model_cfg.noise.randaugment_n} m={model_cfg.noise.randaugment_m}) on {len(data.labeled)} labeled + "
        f"{int(pseudo.weights.sum())} pseudo-labeled images")
    method = cfg.student.method_for(model_cfg)
    if method["name"] != "noisy_student":
        log(f"[gen {g}] distillation method {method['name']} " + " ".join(f"{k}={v}" for k, v in method.items() if k != "name"))
    return _train(ctx, ctx.run.student_dir(g), model_cfg=model_cfg, train_cfg=cfg.student.train, labeled=data.labeled,
                  test=data.test, classes=data.classes, generation=g, role="student", pseudo=pseudo, method=method,
                  teacher=teacher_checkpoint(ctx.run, g), val=data.val, teaching=cfg.student.teaching,
                  teachers=online_ensemble(model_cfg.teachers, teacher_checkpoint(ctx.run, g),
                                           f"student.ladder[{cfg.student.ladder.index(cfg.student_model(g))}].teachers",
                                           data.classes),
                  modality=student_modality(cfg, model_cfg))


STUDENT = Step("student", _student, lambda run, g: run.student_dir(g), MODEL_RECORD, needs=(SELECT,),
               missing="trained student", command="noisystudent student {root} --generation {g}")


def _baseline(ctx: StepContext) -> Outcome:
    """A supervised-only reference in ``baselines/<role>``: ``supervised`` (the config's labels, the
    largest ladder model) or ``oracle`` (every training image labeled).

    Trained with ``teacher_train`` (its epochs replaced by the ``epochs`` option when given: 60 times more
    images per epoch make the oracle's epochs a different budget; its ``num_workers`` by ``loader_workers``,
    a setting of this machine that the frozen config does not record)."""
    from noisystudent.data import create_data

    cfg, opts = ctx.cfg, ctx.options
    role = opts["role"]
    data_cfg = replace(cfg.data, labels_per_class=opts.get("labels_per_class") or cfg.data.labels_per_class)
    data = create_data(data_cfg)
    model_cfg = replace(cfg.student.ladder[-1], init=None)  # a baseline starts from scratch, whatever the rung's init
    train_cfg = replace(cfg.teacher_train, epochs=opts.get("epochs") or cfg.teacher_train.epochs)
    if opts.get("loader_workers") is not None:
        train_cfg = replace(train_cfg, num_workers=opts["loader_workers"])
    log(f"[baseline] {role}: {model_cfg.name} on {len(data.labeled)} labeled images, {train_cfg.epochs} epochs")
    return _train(ctx, ctx.run.baseline_dir(role), model_cfg=model_cfg, train_cfg=train_cfg, labeled=data.labeled,
                  test=data.test, classes=data.classes, generation=0, role=role, job_cfg=replace(cfg, data=data_cfg),
                  modality=student_modality(cfg, model_cfg))


def baseline(role: str) -> Step:
    """The step that trains the ``role`` baseline (``supervised`` or ``oracle``)."""
    return Step(baseline_step(role), _baseline, lambda run, g: run.baseline_dir(role), MODEL_RECORD,
                per_generation=False, command=f"noisystudent teacher {{config}} --run-dir {{root}} --role {role}")


def _distill(ctx: StepContext) -> Outcome:
    """One student (``student.ladder[0]``, ``student.train``) from ``distill.teacher`` on the labeled images,
    with ``distill.method``: model compression, the common case of distillation. Resumable."""
    from noisystudent.distill import get_method

    cfg = ctx.cfg
    method = cfg.distill.method
    if cfg.distill.teacher is None and not cfg.distill.teachers and method["name"] != "supervised":
        raise UserError("config field 'distill.teacher': no teacher checkpoint; pass --teacher CKPT "
                        "(or --method supervised for the no-teacher baseline)")
    data = load_data(cfg)
    record_conditions(ctx.run, data)
    teacher = Path(cfg.distill.teacher) if cfg.distill.teacher else None
    if teacher is not None:
        ck = load_checkpoint(teacher, expected_classes=data.classes)  # fail early, in the driver, naming the file
        if cfg.data.modalities is not None:  # its input channels must be its modality's (exit 2 naming the field)
            from noisystudent.distill.crossmodal import check_teacher_input

            check_teacher_input(ck.spec, cfg.teacher.modality, cfg.data.modalities, "teacher.modality")
    ensemble = online_ensemble(cfg.distill.teachers, teacher, "distill.teachers", data.classes)
    if ensemble:
        teacher = Path(ensemble[0][0])
    model_cfg = cfg.student.ladder[0]
    mode = cfg.distill.teaching.mode
    log(f"[distill] {model_cfg.name} from {teacher or 'no teacher'} with {method['name']}"
        + (f" ({mode} teaching)" if get_method(method["name"]).teacher_for(method) == "online" else "")
        + f" on {len(data.labeled)} labeled images"
        + (f" and the unlabeled ones ({cfg.distill.unlabeled_ratio:g} a labeled one a batch)"
           if cfg.distill.unlabeled_ratio > 0 and data.unlabeled is not None else "")
        + (f", the teacher reading {cfg.teacher.modality}, the student {student_modality(cfg, model_cfg)}"
           if cfg.data.modalities is not None else ""))
    return _train(ctx, ctx.run.distill_dir(), model_cfg=model_cfg, train_cfg=cfg.student.train, labeled=data.labeled,
                  test=data.test, classes=data.classes, generation=0, role="distill", method=method, teacher=teacher,
                  val=data.val, teaching=cfg.distill.teaching, teachers=ensemble,
                  modality=student_modality(cfg, model_cfg), unlabeled=data.unlabeled,
                  unlabeled_ratio=cfg.distill.unlabeled_ratio)


def online_ensemble(refs, teacher: Optional[Path], field: str, classes) -> Optional[list[tuple[str, float]]]:
    """``[(checkpoint, normalised weight)]`` of a ``teachers`` list (``teacher`` standing for ``teacher``),
    each checkpoint loaded once here to fail early, in the driver, naming the field; None without a list."""
    if not refs:
        return None
    from noisystudent.distill.ensemble import normalize_weights

    paths = []
    for i, ref in enumerate(refs):
        if ref.path == "teacher" and teacher is None:
            raise ConfigError(f"{field}[{i}].path", "`teacher` stands for the teacher checkpoint, and there is none")
        paths.append(str(teacher) if ref.path == "teacher" else ref.path)
        load_checkpoint(paths[-1], expected_classes=classes)
    return list(zip(paths, normalize_weights([r.weight for r in refs], len(refs), field)))


DISTILL_STEP = Step(DISTILL, _distill, lambda run, g: run.distill_dir(), MODEL_RECORD, per_generation=False,
                    command="noisystudent distill {config} --run-dir {root}")
