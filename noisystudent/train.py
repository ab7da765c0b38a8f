"""One training job: a supervised teacher, or a noised student on labeled + pseudo-labeled images.

The job is the same for both roles so that a generation's student differs from its teacher only in
what the config says (model, noise, data), never in the loop. It knows nothing about generations or
Ray: :class:`TrainHooks` lets a caller (``pipelines.train_ray``) wrap the model and loaders for DDP and
report checkpoints to Ray Train, while the default hooks run in-process.

Resumability: after every epoch the full training state goes to ``last.pt`` (atomic), and a job started
on a folder that has one continues from it. The final ``model.pt``, ``metrics.json`` and ``history.csv``
are written at the end, each atomically; ``model.pt`` last, so its presence means the job finished.
"""

from __future__ import annotations

import io as _io
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, ModelSpec, checkpoint_id, load_checkpoint, safe_load, save_checkpoint, to_plain
from .config import ModelConfig, TrainConfig
from .data import ImageSource
from .data.torch_dataset import SourceDataset, collate_skip_none
from .distill.base import Batch, DistillMethod, Outputs
from .distill.teacher import OnlineTeacher
from .distill.teaching import Teaching
from .errors import BudgetWarning, PseudoLabelWarning, UserError
from .evaluate import evaluate
from .io import atomic_path, write_json, write_text
from .transforms import create_transform


@dataclass
class PseudoLabeledSet:
    """Pseudo-labeled images for a student: a source, its targets and a duplicate count per image.

    Targets come either as stored, ``topk_classes``/``topk_probs`` ``(N, k)`` with ``num_classes`` (the
    pipeline's way: 8·k bytes an image, expanded to dense rows one batch at a time by
    :class:`~noisystudent.data.torch_dataset.TopKTargets`; ``hard`` gives one-hot rows of the top class),
    or as a dense ``targets`` ``(N, C)`` float32 matrix (small sets, older callers).
    ``weights`` are the balancing duplicate counts from selection; the student sees image ``i``
    ``weights[i]`` times per epoch.
    """

    source: ImageSource
    targets: Optional[np.ndarray] = None  # (N, C) float32 probabilities, or None with top-k
    weights: Optional[np.ndarray] = None  # (N,) int
    topk_classes: Optional[np.ndarray] = None  # (N, k) int32
    topk_probs: Optional[np.ndarray] = None  # (N, k) float32
    num_classes: Optional[int] = None
    hard: bool = False

    def __post_init__(self):
        if self.weights is None:
            raise ValueError("a pseudo-labeled set needs weights (1 per image without balancing)")
        n = len(self.topk_classes) if self.targets is None and self.topk_classes is not None else \
            (len(self.targets) if self.targets is not None else -1)
        if self.targets is None and (self.topk_classes is None or self.topk_probs is None or self.num_classes is None):
            raise ValueError("a pseudo-labeled set needs dense targets, or topk_classes, topk_probs and num_classes")
        if len(self.source) != n or n != len(self.weights):
            raise ValueError("pseudo-labeled source, targets and weights differ in length")

    def dataset_targets(self):
        """What :class:`~noisystudent.data.torch_dataset.SourceDataset` takes as ``targets``."""
        from .data.torch_dataset import TopKTargets

        if self.targets is not None:
            return np.asarray(self.targets, dtype=np.float32)
        return TopKTargets(self.topk_classes, self.topk_probs, self.num_classes, hard=self.hard)


@dataclass
class TrainHooks:
    """How the job talks to its runner. Defaults run in one process; Ray Train overrides them."""

    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    prepare_loader: Callable[[DataLoader], DataLoader] = lambda dl: dl
    is_main: bool = True
    rank: int = 0  # this worker's place among world_size: the loaders shard the data by it
    world_size: int = 1
    # called after each epoch with (epoch_metrics, state_bytes); return nothing
    report: Optional[Callable[[dict, bytes], None]] = None
    # state to resume from (bytes of a ``last.pt``), when the runner restores one
    resume_state: Optional[bytes] = None
    # raise in this epoch once (fault-injection for tests of worker failure recovery)
    fail_at_epoch: Optional[int] = None
    # warn when the job's step budget is below train_cfg.warn_below_steps; a runner that already warned in its
    # driver (pipelines.train_ray) turns it off in the workers
    warn_budget: bool = True


class StudentMix(Protocol):
    """What a student job reads of the experiment's ``student`` section (:class:`pipelines.config.StudentConfig`):
    how many pseudo-labeled images join each labeled one, the optional labeled fine-tune, and the method of
    a model. A protocol, so that the core knows these knobs and not the generation loop they sit in."""

    ratio: float
    finetune_epochs: int
    finetune_lr: float

    def method_for(self, rung: ModelConfig) -> dict: ...


@dataclass
class TrainJob:
    """Inputs of one training job."""

    spec: ModelSpec
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    labeled: ImageSource
    out_dir: Path
    test: Optional[ImageSource] = None
    pseudo: Optional[PseudoLabeledSet] = None
    student: Optional[StudentMix] = None  # the student section when pseudo-labels are mixed in
    seed: int = 0
    device: str = "auto"
    generation: int = 0
    role: str = "teacher"
    config: dict = field(default_factory=dict)
    progress: bool = True  # per-step progress bars and per-epoch lines
    step_bars: bool = True  # per-step bars only (off inside Ray workers, whose logs cannot redraw a bar)
    # distillation method ({name, ...params}); None: supervised, or the student's noisy_student with pseudo
    method: Optional[dict] = None
    # teacher checkpoint: run online by online methods; fidelity is measured against it in every case
    teacher_ckpt: Optional[str] = None
    # validation images: evaluated with the test set (val_acc in history and metrics); the loop decides on them
    val: Optional[ImageSource] = None
    # the config section of train_cfg, for messages (null: teacher_train, or student.train for students)
    train_field: Optional[str] = None
    # what an online teacher sees (TeachingConfig or its dict; null: consistent, the student's own view)
    teaching: Any = None
    # a checkpoint whose weights the student starts from (same architecture and classes); None: random
    init_ckpt: Optional[str] = None

    @property
    def train_section(self) -> str:
        return self.train_field or ("student.train" if self.role in ("student", "distill") else "teacher_train")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full fp32).

    ``auto`` is bf16 on a CUDA device that supports it, fp16 (with loss scaling) on an older one, and off
    elsewhere; ``bf16``/``fp16`` are taken as asked (torch autocasts on CPU too, slowly).
    """
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def _loader(dataset, batch_size: int, num_workers: int, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A shuffling loader over this rank's share of ``dataset``
    (:class:`~noisystudent.data.samplers.ShuffleSampler`: 4 bytes an image where ``RandomSampler`` and
    ``DistributedSampler`` hold a Python int per image; duplicated pseudo-labels are positions of a
    :class:`~noisystudent.data.torch_dataset.RepeatedDataset`, not repeated indices)."""
    from .data.samplers import ShuffleSampler

    g = torch.Generator()
    g.manual_seed(seed)  # the loader workers' seeds
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShuffleSampler(len(dataset), seed=seed, rank=rank, world_size=world_size),
        num_workers=num_workers,
        collate_fn=collate_skip_none,
        drop_last=len(dataset) > batch_size * world_size,
        generator=g,
        worker_init_fn=_worker_init,
        persistent_workers=num_workers > 0,
    )


def _cycle(loader: DataLoader):
    while True:
        yield from loader


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    # no weight decay on norms and biases (timm's param_groups_weight_decay)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def _make_scheduler(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    total_steps = max(total_steps, 1)
    warmup_steps = min(warmup_steps, total_steps - 1)
    cosine = CosineAnnealingLR(opt, T_max=max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return cosine
    warm = LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(opt, [warm, cosine], milestones=[warmup_steps])


# --------------------------------------------------------------------------------------------------
# the step budget


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a job runs (per DDP worker; the workers step together) and why."""

    epoch_steps: tuple[int, ...]  # steps of each training epoch; the optional labeled fine-tune is extra
    pass_steps: int  # steps of one pass over the data (pseudo-labeled images for a student, else labeled)
    source: str  # the setting that fixed the budget: "total_steps", "steps_per_epoch" or "epochs"
    data: str  # what one pass is, for messages

    @property
    def total(self) -> int:
        return sum(self.epoch_steps)


def _use_pseudo(job: "TrainJob") -> bool:
    return (job.pseudo is not None and len(job.pseudo.source) > 0 and job.student is not None
            and job.student.ratio > 0)


def _unlabeled_batch(job: "TrainJob") -> int:
    return max(1, int(round(job.student.ratio * job.train_cfg.batch_size)))


def plan_steps(job: "TrainJob", world_size: int = 1) -> StepPlan:
    """The job's optimizer steps per epoch, from ``train_cfg``: ``total_steps`` split into ``epochs`` rounds
    (the first ``total_steps % epochs`` one step longer), else ``steps_per_epoch`` each epoch, else one pass
    over the data each epoch (a student's pass: its pseudo-labeled images with their balancing duplicates
    at the unlabeled batch size; a teacher's: its labeled images), shared among ``world_size`` workers;
    the last two lengthened to ``min_steps`` in all (rounded up to whole epochs) when they come to fewer.

    Only one pass is tied to the data size: 50 epochs over 100 labeled images at batch 64 are 50 steps."""
    cfg = job.train_cfg
    if _use_pseudo(job):
        n, bs = int(np.maximum(job.pseudo.weights.astype(np.int64), 0).sum()), _unlabeled_batch(job)
        data = f"{n} pseudo-labeled images (with duplicates) at batch {bs}"
    else:
        n, bs = len(job.labeled), cfg.batch_size
        data = f"{n} labeled images at batch {bs}"
    pass_steps = max(1, max(1, n // bs) // max(world_size, 1))
    if world_size > 1:
        data += f" on {world_size} workers"
    if cfg.total_steps is not None:
        q, r = divmod(cfg.total_steps, cfg.epochs)
        return StepPlan(tuple(q + (1 if e < r else 0) for e in range(cfg.epochs)), pass_steps, "total_steps", data)
    per_epoch, source = (cfg.steps_per_epoch, "steps_per_epoch") if cfg.steps_per_epoch else (pass_steps, "epochs")
    if per_epoch * cfg.epochs < cfg.min_steps:
        per_epoch, source = -(-cfg.min_steps // cfg.epochs), "min_steps"
    return StepPlan((per_epoch,) * cfg.epochs, pass_steps, source, data)


def budget_warning(job: "TrainJob", plan: StepPlan) -> Optional[str]:
    """The warning for a job planned below ``train_cfg.warn_below_steps`` optimizer steps, None when it is not."""
    cfg, f = job.train_cfg, job.train_section
    if cfg.warn_below_steps <= 0 or plan.total >= cfg.warn_below_steps:
        return None
    how = {"total_steps": f"{f}.total_steps={cfg.total_steps}",
           "steps_per_epoch": f"{f}.epochs={cfg.epochs} x {f}.steps_per_epoch={cfg.steps_per_epoch}",
           "min_steps": f"{f}.min_steps={cfg.min_steps}",
           "epochs": f"{f}.epochs={cfg.epochs} x {plan.pass_steps} step(s), one pass over {plan.data}"}[plan.source]
    suggest = max(1000, cfg.warn_below_steps)
    return (f"the {job.role} of generation {job.generation} will run {plan.total} optimizer steps ({how}), fewer than "
            f"{f}.warn_below_steps={cfg.warn_below_steps}; a model trained from scratch learns little in so few. "
            f"Raise {f}.min_steps (a floor: e.g. {suggest}) or set {f}.total_steps for a budget in steps whatever the "
            f"data size; {f}.warn_below_steps: 0 silences this")


def warn_budget(job: "TrainJob", world_size: int = 1) -> StepPlan:
    """Plan the job's steps and warn (:class:`BudgetWarning`) before it starts when they are too few."""
    plan = plan_steps(job, world_size)
    msg = budget_warning(job, plan)
    if msg is not None:
        import warnings

        warnings.warn(msg, BudgetWarning, stacklevel=2)
    return plan


def _batch(batch, device):
    if batch is None or len(batch) == 0 or batch[0] is None or len(batch[0]) == 0:
        return None
    x, y, _idx = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _state_bytes(obj: dict) -> bytes:
    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


_RESUME_KEYS = ("model", "optimizer", "scheduler", "history", "epoch", "rng")


def _check_resume_state(state: Any, path: Path) -> None:
    """Refuse a ``last.pt`` that is not a training state, naming the file and the missing field."""
    if not isinstance(state, dict):
        raise UserError(f"resume state {path} is not a training state (got {type(state).__name__}); delete it to restart")
    for key in _RESUME_KEYS:
        if key not in state:
            raise UserError(f"resume state {path}: field '{key}' is missing; delete the file to restart the job")


class StudentStep(torch.nn.Module):
    """The student and the method's extra modules as one module, so one DDP wrapper synchronises the
    gradients of both and one ``forward`` runs the student and the method's loss.

    ``forward(batch, teacher_outputs)`` returns ``(loss, parts, labeled_logits)``; with ``labels_only``
    (the optional labeled fine-tune at the end of a student job) the loss is cross-entropy alone."""

    def __init__(self, student: torch.nn.Module, method: DistillMethod):
        super().__init__()
        self.student = student
        self.method = method

    def forward(self, batch: Batch, teacher: Optional[Outputs], labels_only: bool = False):
        x = batch.inputs  # labeled rows, unlabeled rows, then the method's extra rows
        stages = self.method.student_stages if not labels_only else ()
        if labels_only:
            logits = self.student(x)
            ce = F.cross_entropy(logits, batch.y, label_smoothing=self.method.label_smoothing)
            # the method's modules (a regressor, ONE's branches, DML's peers) sit this phase out; a zero
            # term keeps them in the graph so DDP, which expects a gradient for every parameter, does not stall
            extra = [p.sum() for p in self.method.parameters() if p.requires_grad]
            loss = ce + 0.0 * torch.stack(extra).sum() if extra else ce
            return loss, {"loss_labeled": ce.detach()}, logits
        if stages:
            logits, feats = self.student.forward_intermediates(x, indices=list(stages))
        else:
            logits, feats = self.student(x), []
        out = Outputs(logits=logits, features=list(feats), n_labeled=batch.n_labeled, n_extra=batch.n_extra)
        loss, parts = self.method(out, teacher, batch)
        return loss, parts, out.labeled


def _job_method(job: TrainJob, use_pseudo: bool) -> dict:
    """The job's resolved method: as given, else the student's Noisy Student loss, else supervised."""
    from .distill import resolve_method_config

    if job.method is not None:
        return resolve_method_config(job.method, "method")
    if use_pseudo and job.student is not None:
        return job.student.method_for(job.model_cfg)
    return resolve_method_config({"name": "supervised"}, "method")


def _load_teacher(job: TrainJob, device: torch.device, stages) -> OnlineTeacher:
    ckpt = load_checkpoint(job.teacher_ckpt, expected_classes=job.spec.classes)
    s, t = job.spec, ckpt.spec
    if s.in_chans != t.in_chans:  # a different side is fine: the teaching setting resizes each model's view
        raise UserError(f"teacher {job.teacher_ckpt} takes {t.in_chans}-channel images, the student "
                        f"{s.in_chans}-channel ones")
    return OnlineTeacher(ckpt, device, stages=stages)


def init_weights(model: torch.nn.Module, path: str, spec: ModelSpec) -> None:
    """Start ``model`` from the weights of checkpoint ``path`` (a student initialised from its teacher).

    The architecture and classes must be the checkpoint's; dropout and drop path may differ (they hold no
    weights), which is what lets a noised student continue from a clean teacher."""
    ckpt = load_checkpoint(path, expected_classes=spec.classes)
    if (ckpt.spec.name, ckpt.spec.in_chans) != (spec.name, spec.in_chans):
        raise UserError(f"init checkpoint {path} is a {ckpt.spec.name} on {ckpt.spec.in_chans}-channel images; the "
                        f"student is a {spec.name} on {spec.in_chans}-channel ones (init needs the same architecture)")
    model.load_state_dict(ckpt.state_dict)


@dataclass
class _Loop:
    """Everything one job's epochs share; built by :func:`_setup`, so :func:`run_training` reads at once."""

    job: TrainJob
    hooks: TrainHooks
    device: torch.device
    model: torch.nn.Module  # StudentStep, maybe DDP-wrapped
    core: StudentStep
    method_cfg: dict
    teacher: Optional[OnlineTeacher]
    lab_loader: DataLoader
    unl_loader: Optional[DataLoader]
    plan: StepPlan
    finetune_steps: int
    total_epochs: int
    opt: torch.optim.Optimizer
    sched: Any
    ema: Any
    amp_dtype: Optional[torch.dtype]
    scaler: Any
    eval_tf: Callable
    use_pseudo: bool
    n_pseudo: int
    teaching: Teaching

    @property
    def steps_per_epoch(self) -> int:
        """Steps of the first epoch (every epoch's, unless total_steps does not divide evenly)."""
        return self.plan.epoch_steps[0]

    @property
    def student(self) -> torch.nn.Module:
        return self.core.student

    @property
    def final_core(self) -> StudentStep:
        """The student and the method's modules as evaluated and exported: their EMA when ``ema_decay``
        is set (both averaged, so an ensemble of a shared trunk and its branches stays one model)."""
        return self.ema.module if self.ema is not None else self.core

    @property
    def final_model(self) -> torch.nn.Module:
        return self.final_core.student


def _setup(job: TrainJob, hooks: TrainHooks, device: torch.device) -> _Loop:
    """Build the models, the method, the online teacher, the loaders and the optimisation of a job."""
    cfg, spec = job.train_cfg, job.spec
    student_cfg = job.student
    pseudo = job.pseudo if (job.pseudo is not None and len(job.pseudo.source) > 0) else None
    use_pseudo = pseudo is not None and student_cfg is not None and student_cfg.ratio > 0
    method_cfg = _job_method(job, use_pseudo)
    from .distill import create_method, get_method, resolve_method_config

    if job.pseudo is not None and not use_pseudo and get_method(method_cfg["name"]).teacher_for(method_cfg) == "offline":
        # the loop's selection kept nothing (it warned then): the student learns from the labels alone
        if hooks.is_main:
            import warnings

            warnings.warn(f"the student of generation {job.generation} has no pseudo-labels to learn from "
                          f"(selection kept none, or student.ratio is 0); it trains on the {len(job.labeled)} labeled "
                          f"images alone, as method supervised instead of {method_cfg['name']}", PseudoLabelWarning,
                          stacklevel=3)
        method_cfg = resolve_method_config({"name": "supervised"}, "method")

    student = spec.build(inference=False)
    if job.init_ckpt:
        init_weights(student, job.init_ckpt, spec)
    student = student.to(device)

    teacher = None
    if get_method(method_cfg["name"]).teacher_for(method_cfg) == "online":
        if not job.teacher_ckpt:
            raise UserError(f"method {method_cfg['name']!r} runs a teacher online: give its checkpoint "
                            "(distill.teacher or --teacher)")
        teacher = _load_teacher(job, device, ())
    # each stage dict also names its model, so a method's config error can name both models
    method = create_method(method_cfg, student_info=[{**s, "model": spec.name} for s in student.feature_info],
                           teacher_info=[{**s, "model": teacher.checkpoint.spec.name} for s in teacher.feature_info]
                           if teacher is not None else None,
                           num_classes=spec.num_classes, label_smoothing=cfg.label_smoothing,
                           student_spec=spec).to(device)
    if teacher is not None:
        teacher.stages = tuple(method.teacher_stages)
    if method.teacher_kind == "offline" and not use_pseudo:
        raise UserError(f"method {method_cfg['name']!r} learns from stored pseudo-labels, which this job has none of; "
                        "use it in `noisystudent run`, or an online method (e.g. hinton) with `noisystudent distill`")
    core = StudentStep(student, method)
    model = hooks.prepare_model(core)
    core = getattr(model, "module", model)

    # the teaching setting applies to an online teacher only (stored labels were made on clean images)
    teaching = Teaching.from_config(job.teaching if teacher is not None else None, spec.image_size,
                                    teacher.checkpoint.spec.image_size if teacher is not None else None,
                                    spec.num_classes)
    vs = teaching.view_size  # views are drawn at the larger model's side and resized per model
    train_tf = teaching.train_transform(create_transform(vs, spec.in_chans, spec.mean, spec.std, job.model_cfg.noise),
                                        create_transform(vs, spec.in_chans, spec.mean, spec.std, None))
    eval_tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    lab_bs = cfg.batch_size
    labeled_ds = SourceDataset(job.labeled, train_tf)
    unl_loader, n_pseudo = None, 0
    if use_pseudo:
        unl_bs = _unlabeled_batch(job)
        from .data.torch_dataset import RepeatedDataset

        unl_ds = SourceDataset(pseudo.source, train_tf, targets=pseudo.dataset_targets())
        # duplicates by binary search over cumulative weights, not an expanded list of indices (issue 17)
        expanded = RepeatedDataset(unl_ds, pseudo.weights)
        unl_loader = hooks.prepare_loader(_loader(expanded, unl_bs, cfg.num_workers, job.seed + 1, hooks.rank, hooks.world_size))
        n_pseudo = int(pseudo.weights.sum())
    # each DDP worker sees 1/world_size of the data per epoch
    plan = plan_steps(job, hooks.world_size)
    lab_loader = hooks.prepare_loader(_loader(labeled_ds, lab_bs, cfg.num_workers, job.seed, hooks.rank, hooks.world_size))
    finetune_epochs = student_cfg.finetune_epochs if (student_cfg is not None and use_pseudo) else 0

    lr = cfg.lr * (hooks.world_size if cfg.scale_lr_with_workers else 1)
    opt = _make_optimizer(core, cfg, lr)  # the method's extra modules train with the student
    sched = _make_scheduler(opt, plan.total, int(cfg.warmup_epochs * plan.total / cfg.epochs))
    ema = None
    if cfg.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # over the student *and* the method's modules: ONE's branches share the trunk, DML's peers are
        # exported beside the student, and an EMA trunk with raw branches is a model nobody trained
        ema = AveragedModel(core, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    # mixed precision: autocast around forward + loss; fp16 needs loss scaling, bf16 does not
    amp_dtype = resolve_amp(cfg.amp, device)
    return _Loop(job=job, hooks=hooks, device=device, model=model, core=core, method_cfg=method_cfg, teacher=teacher,
                 lab_loader=lab_loader, unl_loader=unl_loader,
                 plan=plan, finetune_steps=max(1, len(labeled_ds) // lab_bs),
                 total_epochs=cfg.epochs + finetune_epochs, opt=opt, sched=sched, ema=ema, amp_dtype=amp_dtype,
                 scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), eval_tf=eval_tf,
                 use_pseudo=use_pseudo, n_pseudo=n_pseudo, teaching=teaching)


def _resume(lp: _Loop, state_bytes: bytes, path: Path) -> tuple[int, list[dict]]:
    """Restore a ``last.pt``: student, the method's extra modules, optimizer, schedule, EMA, RNG."""
    state = safe_load(_io.BytesIO(state_bytes), what=f"resume state {path}", map_location=lp.device)
    _check_resume_state(state, path)
    lp.student.load_state_dict(state["model"])
    method_state = lp.core.method.state_dict()
    if method_state:
        if not isinstance(state.get("method"), dict):
            raise UserError(f"resume state {path}: field 'method' (the {lp.method_cfg['name']} method's trainable "
                            "modules) is missing; delete the file to restart the job")
        lp.core.method.load_state_dict(state["method"])
    lp.opt.load_state_dict(state["optimizer"])
    lp.sched.load_state_dict(state["scheduler"])
    if lp.ema is not None and state.get("ema") is not None:
        ema_state = state["ema"]
        if any(k.startswith("module.") and not k.startswith(("module.student.", "module.method.")) for k in ema_state):
            # a last.pt from before the EMA covered the method's modules: its average is the student's
            ema_state = {("module.student." + k[len("module."):] if k.startswith("module.") else k): v
                         for k, v in ema_state.items()}
            ema_state.update({k: v for k, v in lp.ema.state_dict().items() if k.startswith("module.method.")})
        lp.ema.load_state_dict(ema_state)
    torch.set_rng_state(state["rng"].cpu())  # map_location put it on the GPU; the CPU generator needs it back
    return state["epoch"] + 1, list(state["history"])


def _train_epoch(lp: _Loop, epoch: int, labeled_iter) -> dict:
    """One epoch of optimizer steps; returns its history row (losses by part, accuracy, speed)."""
    job, cfg, device = lp.job, lp.job.train_cfg, lp.device
    finetune = epoch >= cfg.epochs
    if finetune and epoch == cfg.epochs:
        # short fine-tune on labeled data only, constant small lr (paper's optional last step)
        lp.opt = _make_optimizer(lp.core, cfg, job.student.finetune_lr)
        lp.sched = torch.optim.lr_scheduler.ConstantLR(lp.opt, factor=1.0, total_iters=0)
    for loader in (lp.lab_loader, lp.unl_loader):
        sampler = getattr(loader, "sampler", None) if loader is not None else None
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
    lp.model.train()
    lp.core.method.set_epoch(epoch, cfg.epochs)  # a method's schedule (FitNet's hint stage) follows the epoch
    if lp.hooks.fail_at_epoch is not None and epoch == lp.hooks.fail_at_epoch:
        marker = Path(job.out_dir) / f".failed-once-{epoch}"
        if not marker.exists():
            marker.write_text("injected failure\n")
            raise RuntimeError(f"injected failure in epoch {epoch}")
    t0 = time.perf_counter()
    # sums stay on the device (no sync per step on a GPU); read once at the end of the epoch
    n_images, loss_sum, correct, seen = 0, torch.zeros((), device=device), torch.zeros((), device=device), 0
    parts_sum: dict[str, torch.Tensor] = {}
    unl_iter = iter(lp.unl_loader) if (lp.unl_loader is not None and not finetune) else None
    teacher = lp.teacher if not finetune else None
    bar = tqdm(range(lp.plan.epoch_steps[epoch] if not finetune else lp.finetune_steps),
               desc=f"{job.role} gen{job.generation} epoch {epoch + 1}/{lp.total_epochs}" + (" (fine-tune)" if finetune else ""),
               disable=not (job.progress and job.step_bars and lp.hooks.is_main), leave=False, dynamic_ncols=True)
    for _ in bar:
        lb = _batch(next(labeled_iter), device)
        if lb is None:
            continue
        batch = Batch(x_labeled=lb[0], y=lb[1])
        if unl_iter is not None:
            try:
                ub = _batch(next(unl_iter), device)
            except StopIteration:
                unl_iter = iter(lp.unl_loader)
                ub = _batch(next(unl_iter), device)
            if ub is not None:
                batch.x_unlabeled, batch.targets = ub
        # split paired views, mix (function_matching), resize per model; y_hard: labels for the accuracy
        batch, y_hard = lp.teaching.prepare(batch, mixup=not finetune)
        if not finetune:
            extra = lp.core.method.extra_inputs(batch, teacher)  # e.g. BSS's adversarial samples
            batch.x_extra = extra.detach() if extra is not None else None
        with torch.autocast(device.type, dtype=lp.amp_dtype, enabled=lp.amp_dtype is not None):
            t_out = None
            if teacher is not None:
                t_out = teacher(lp.teaching.teacher_input(batch), n_labeled=batch.n_labeled)
                t_out.n_extra = batch.n_extra
            loss, parts, logits_l = lp.model(batch, t_out, finetune)
        if device.type == "cpu" and not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} in epoch {epoch + 1}; lower train.lr")
        lp.opt.zero_grad(set_to_none=True)
        lp.scaler.scale(loss).backward()
        lp.scaler.step(lp.opt)
        lp.scaler.update()
        if not finetune:
            lp.sched.step()
        if lp.ema is not None:
            lp.ema.update_parameters(lp.core)
        n = batch.n_labeled + (0 if batch.x_unlabeled is None else len(batch.x_unlabeled))
        n_images += n
        loss_sum += loss.detach().float() * n
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0) + torch.as_tensor(v, device=device).detach().float() * n
        correct += (logits_l.argmax(1) == y_hard).sum()
        seen += batch.n_labeled
        if bar.disable is False and device.type == "cpu":
            bar.set_postfix(loss=f"{float(loss_sum) / max(n_images, 1):.3f}", acc=f"{int(correct) / max(seen, 1):.3f}")
    bar.close()
    if n_images == 0:  # every batch came back empty: no image could be read (a wrong path, say)
        raise UserError(f"{job.role} of generation {job.generation}: epoch {epoch + 1} read no image at all "
                        f"({len(job.labeled)} labeled images listed"
                        + (f", e.g. {job.labeled.image_id(0)!r}" if len(job.labeled) else "") + "); "
                        "check that the data paths exist where training runs")
    if not torch.isfinite(loss_sum):
        raise FloatingPointError(f"loss is not finite in epoch {epoch + 1}; lower train.lr")
    seconds = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "phase": "finetune" if finetune else "train", "lr": lp.opt.param_groups[0]["lr"],
           "train_loss": float(loss_sum) / max(n_images, 1), "loss_labeled": 0.0, "loss_unlabeled": 0.0}
    row.update({k: float(v) / max(n_images, 1) for k, v in parts_sum.items()})
    row.update({"train_acc": int(correct) / max(seen, 1), "seconds": seconds,
                "images_per_s": n_images * lp.hooks.world_size / max(seconds, 1e-9)})
    return row


def run_training(job: TrainJob, hooks: Optional[TrainHooks] = None) -> dict[str, Any]:
    """Train, evaluate and write ``model.pt``, ``metrics.json``, ``history.csv`` into ``job.out_dir``.

    The loop calls the job's distillation method (``job.method``; by default ``supervised``, or
    ``noisy_student`` when the job has pseudo-labels) and knows no loss by name. Returns the final
    metrics. Resumes from ``out_dir/last.pt`` (or ``hooks.resume_state``) when present.
    """
    hooks = hooks or TrainHooks()
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(job.device)
    seed_everything(job.seed)
    if hooks.warn_budget and hooks.is_main:
        warn_budget(job, hooks.world_size)
    lp = _setup(job, hooks, device)
    cfg, spec = job.train_cfg, job.spec

    history: list[dict] = []
    start_epoch = 0
    last_path = out / "last.pt"
    resume = hooks.resume_state if hooks.resume_state is not None else (last_path.read_bytes() if last_path.is_file() else None)
    if resume is not None:
        start_epoch, history = _resume(lp, resume, last_path)
        if hooks.is_main and job.progress:
            tqdm.write(f"resuming {job.role} from epoch {start_epoch} ({out})")

    labeled_iter = _cycle(lp.lab_loader)
    t_job = time.perf_counter()
    for epoch in range(start_epoch, lp.total_epochs):
        row = _train_epoch(lp, epoch, labeled_iter)
        last = epoch == lp.total_epochs - 1
        if job.test is not None and hooks.is_main and (last or (epoch + 1) % cfg.eval_every == 0):
            m = evaluate(lp.final_model, job.test, lp.eval_tf, batch_size=256, device=device, classes=spec.classes, progress=False)
            row["test_acc"] = m["top1"]
        if job.val is not None and hooks.is_main and (last or (epoch + 1) % cfg.eval_every == 0):
            m = evaluate(lp.final_model, job.val, lp.eval_tf, batch_size=256, device=device, classes=spec.classes, progress=False)
            row["val_acc"] = m["top1"]
        history.append(row)
        state = {"model": lp.student.state_dict(), "method": lp.core.method.state_dict(), "optimizer": lp.opt.state_dict(),
                 "scheduler": lp.sched.state_dict(), "ema": lp.ema.state_dict() if lp.ema is not None else None,
                 "history": to_plain(history), "epoch": epoch, "rng": torch.get_rng_state()}
        blob = _state_bytes(state)
        if hooks.is_main:
            with atomic_path(last_path) as tmp:
                tmp.write_bytes(blob)
            if job.progress:
                tqdm.write(
                    f"{job.role} gen{job.generation} epoch {epoch + 1}/{lp.total_epochs}: loss {row['train_loss']:.4f} "
                    f"train_acc {row['train_acc']:.4f}" + (f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else "")
                    + (f" test_acc {row['test_acc']:.4f}" if "test_acc" in row else "")
                    + f" ({row['images_per_s']:.0f} img/s)"
                )
        if hooks.report is not None:
            hooks.report(row, blob)
    return _finish(lp, history, time.perf_counter() - t_job)


def _teacher_eval_transform(lp: _Loop, teacher: Checkpoint) -> Optional[Callable]:
    """The clean view the teacher is compared on for fidelity (None: the student's own).

    An online teacher saw the student's normalisation at its teaching size (``teacher_image_size``, by
    default its checkpoint's); an offline one labeled the images with its own eval transform."""
    s = lp.job.spec
    if lp.teacher is not None:
        size = lp.teaching.teacher_size
        return None if size == s.image_size else create_transform(size, s.in_chans, s.mean, s.std, None)
    t = teacher.spec
    if (t.image_size, t.in_chans, list(t.mean), list(t.std)) == (s.image_size, s.in_chans, list(s.mean), list(s.std)):
        return None
    return create_transform(t.image_size, t.in_chans, t.mean, t.std, None)


def _finish(lp: _Loop, history: list[dict], seconds: float) -> dict[str, Any]:
    """Final evaluation (accuracy and fidelity to the teacher) and the job's artifacts, ``model.pt`` last."""
    job, device, spec = lp.job, lp.device, lp.job.spec
    out = Path(job.out_dir)
    metrics: dict[str, Any] = {
        "role": job.role,
        "generation": job.generation,
        "model": spec.name,
        "method": lp.method_cfg["name"],
        "method_params": {k: v for k, v in lp.method_cfg.items() if k != "name"},
        "epochs": lp.total_epochs,
        "steps": lp.plan.total,
        "steps_source": lp.plan.source,
        "train_seconds": sum(r["seconds"] for r in history),
        "images_per_s": float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
        "labeled_images": len(job.labeled),
        "pseudo_labeled_images": lp.n_pseudo if lp.use_pseudo else 0,
        "wall_seconds_this_session": seconds,
        "amp": {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[lp.amp_dtype],
        "teaching": lp.teaching.mode if lp.teacher is not None else None,
    }
    if lp.hooks.is_main:
        final, spec, done = _export(lp, metrics)  # done: the exported model's evaluations, when _export made them
        if job.val is not None:
            val_metrics = done.get("val_acc") or evaluate(final, job.val, lp.eval_tf, batch_size=256, device=device,
                                                          classes=spec.classes, progress=False)
            metrics.update({"val_acc": val_metrics["top1"], "val_images": len(job.val)})
        if job.test is not None:
            test_metrics = done.get("test_acc") or evaluate(final, job.test, lp.eval_tf, batch_size=256, device=device,
                                                            classes=spec.classes,
                                                            progress=job.progress and job.step_bars)
            metrics.update({f"test_{k}" if k != "top1" else "test_acc": v for k, v in test_metrics.items()})
            if job.teacher_ckpt:
                from .distill.fidelity import fidelity

                teacher = lp.teacher.checkpoint if lp.teacher is not None else load_checkpoint(job.teacher_ckpt)
                metrics.update(fidelity(final, teacher, job.test, lp.eval_tf, device=device,
                                        teacher_transform=_teacher_eval_transform(lp, teacher)))
        metrics["checkpoint_id"] = checkpoint_id(final, job.generation, job.role)
        if spec.name != job.spec.name:
            metrics["model"] = spec.name  # the method exported another model (a cohort member, an ensemble)
        write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
        write_json(out / "metrics.json", metrics)
        save_checkpoint(out / "model.pt", final, spec, metrics=metrics, config=job.config, generation=job.generation,
                        role=job.role)
        (out / "last.pt").unlink(missing_ok=True)
    return metrics


def _evaluate_model(lp: _Loop, model: torch.nn.Module, spec: ModelSpec) -> dict[str, dict]:
    """Validation and test evaluations of one model of the job (a cohort member, the student), keyed
    ``val_acc`` / ``test_acc`` (each :func:`evaluate`'s whole result; ``top1`` is the accuracy)."""
    out, job = {}, lp.job
    for key, src in (("val_acc", job.val), ("test_acc", job.test)):
        if src is not None:
            out[key] = evaluate(model, src, lp.eval_tf, batch_size=256, device=lp.device, classes=spec.classes,
                                progress=False)
    return out


def _export(lp: _Loop, metrics: dict) -> tuple[torch.nn.Module, ModelSpec, dict[str, dict]]:
    """The model the job writes as ``model.pt``: the method's choice (:meth:`DistillMethod.export_model`),
    its spec, and its evaluations when they were made here (so :func:`_finish` does not repeat them).

    The other full models a method trained (a DML cohort: :meth:`DistillMethod.members`) are evaluated
    and written first, each as ``members/<label>/model.pt`` with its ``metrics.json``, so every member is
    kept whichever one the job exports; ``metrics['members']`` lists them."""
    job, method = lp.job, lp.final_core.method  # with EMA: the averaged members, branches, gate
    student, spec = lp.final_model, job.spec
    members = method.members()
    member_metrics, evals = None, {}
    if members:
        import dataclasses

        evals[id(student)] = _evaluate_model(lp, student, spec)
        member_metrics = [{"label": "student", "model": spec.name,
                           **{k: v["top1"] for k, v in evals[id(student)].items()}}]
        for label, model, name in members:
            m_spec = dataclasses.replace(spec, name=name)
            evals[id(model)] = _evaluate_model(lp, model, m_spec)
            m = {"label": label, "model": name, **{k: v["top1"] for k, v in evals[id(model)].items()}}
            member_metrics.append(m)
            d = Path(job.out_dir) / "members" / label
            write_json(d / "metrics.json", {**m, "role": job.role, "generation": job.generation})
            save_checkpoint(d / "model.pt", model, m_spec, metrics=m, config=job.config, generation=job.generation,
                            role=job.role)
        metrics["members"] = member_metrics
    model, out_spec = method.export_model(student, spec, member_metrics)
    if model is not student:
        metrics["exported"] = out_spec.name
    return model, out_spec, evals.get(id(model), {})


def spec_for(model_cfg: ModelConfig, data_cfg, classes: list[str]) -> ModelSpec:
    """The :class:`ModelSpec` of a configured model on a configured data set."""
    return ModelSpec(
        name=model_cfg.name,
        num_classes=len(classes),
        in_chans=data_cfg.in_chans,
        image_size=data_cfg.image_size,
        mean=list(data_cfg.mean),
        std=list(data_cfg.std),
        classes=list(classes),
        drop_rate=model_cfg.drop_rate,
        drop_path_rate=model_cfg.drop_path_rate,
    )
