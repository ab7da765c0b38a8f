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
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import ModelSpec, checkpoint_id, safe_load, save_checkpoint, to_plain
from .errors import UserError
from .config import ModelConfig, StudentConfig, TrainConfig
from .data import ImageSource
from .data.torch_dataset import SourceDataset, collate_skip_none
from .evaluate import evaluate
from .io import atomic_path, write_json, write_text
from .losses import student_loss
from .transforms import create_transform


@dataclass
class PseudoLabeledSet:
    """Pseudo-labeled images for a student: a source, one probability row per image and a duplicate count.

    ``weights`` are the balancing duplicate counts from selection; the student sees image ``i``
    ``weights[i]`` times per epoch.
    """

    source: ImageSource
    targets: np.ndarray  # (N, C) float32 probabilities
    weights: np.ndarray  # (N,) int

    def __post_init__(self):
        if len(self.source) != len(self.targets) or len(self.targets) != len(self.weights):
            raise ValueError("pseudo-labeled source, targets and weights differ in length")


@dataclass
class TrainHooks:
    """How the job talks to its runner. Defaults run in one process; Ray Train overrides them."""

    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    prepare_loader: Callable[[DataLoader], DataLoader] = lambda dl: dl
    is_main: bool = True
    world_size: int = 1
    # called after each epoch with (epoch_metrics, state_bytes); return nothing
    report: Optional[Callable[[dict, bytes], None]] = None
    # state to resume from (bytes of a ``last.pt``), when the runner restores one
    resume_state: Optional[bytes] = None
    # raise in this epoch once (fault-injection for tests of worker failure recovery)
    fail_at_epoch: Optional[int] = None


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
    student: Optional[StudentConfig] = None
    seed: int = 0
    device: str = "auto"
    generation: int = 0
    role: str = "teacher"
    config: dict = field(default_factory=dict)
    progress: bool = True  # per-step progress bars and per-epoch lines
    step_bars: bool = True  # per-step bars only (off inside Ray workers, whose logs cannot redraw a bar)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def _loader(dataset, batch_size: int, num_workers: int, seed: int, indices: Optional[np.ndarray] = None) -> DataLoader:
    """A shuffling loader; ``indices`` (with repeats) lets duplicated pseudo-labels appear several times.

    The repetition is a ``Subset`` of the dataset rather than a custom sampler so that Ray Train's
    ``prepare_data_loader`` can swap in a ``DistributedSampler`` and each worker sees its own share.
    """
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, indices.tolist())
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_skip_none,
        drop_last=len(dataset) > batch_size,
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


def run_training(job: TrainJob, hooks: Optional[TrainHooks] = None) -> dict[str, Any]:
    """Train, evaluate and write ``model.pt``, ``metrics.json``, ``history.csv`` into ``job.out_dir``.

    Returns the final metrics. Resumes from ``out_dir/last.pt`` (or ``hooks.resume_state``) when present.
    """
    hooks = hooks or TrainHooks()
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(job.device)
    seed_everything(job.seed)
    cfg, mcfg = job.train_cfg, job.model_cfg
    spec = job.spec

    model = spec.build(inference=False).to(device)
    model = hooks.prepare_model(model)
    core = getattr(model, "module", model)

    train_tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, mcfg.noise)
    eval_tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)

    # --- data -------------------------------------------------------------------------------------
    student = job.student
    pseudo = job.pseudo if (job.pseudo is not None and len(job.pseudo.source) > 0) else None
    use_pseudo = pseudo is not None and student is not None and student.ratio > 0
    lab_bs = cfg.batch_size
    labeled_ds = SourceDataset(job.labeled, train_tf)
    if use_pseudo:
        unl_bs = max(1, int(round(student.ratio * lab_bs)))
        unl_ds = SourceDataset(pseudo.source, train_tf, targets=pseudo.targets.astype(np.float32))
        expanded = np.repeat(np.arange(len(pseudo.source)), np.maximum(pseudo.weights.astype(np.int64), 0))
        unl_loader = hooks.prepare_loader(_loader(unl_ds, unl_bs, cfg.num_workers, job.seed + 1, expanded))
        steps_per_epoch = max(1, len(expanded) // unl_bs)
    else:
        unl_bs, unl_loader = 0, None
        steps_per_epoch = max(1, len(labeled_ds) // lab_bs)
    # each DDP worker sees 1/world_size of the data per epoch
    steps_per_epoch = cfg.steps_per_epoch or max(1, steps_per_epoch // hooks.world_size)
    lab_loader = hooks.prepare_loader(_loader(labeled_ds, lab_bs, cfg.num_workers, job.seed))

    finetune_epochs = student.finetune_epochs if (student is not None and use_pseudo) else 0
    total_epochs = cfg.epochs + finetune_epochs

    # --- optimisation -----------------------------------------------------------------------------
    lr = cfg.lr * (hooks.world_size if cfg.scale_lr_with_workers else 1)
    opt = _make_optimizer(core, cfg, lr)
    sched = _make_scheduler(opt, cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    ema = None
    if cfg.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(core, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

    history: list[dict] = []
    start_epoch = 0
    resume = hooks.resume_state
    last_path = out / "last.pt"
    if resume is None and last_path.is_file():
        resume = last_path.read_bytes()
    if resume is not None:
        state = safe_load(_io.BytesIO(resume), what=f"resume state {last_path}", map_location=device)
        _check_resume_state(state, last_path)
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng"])
        if hooks.is_main and job.progress:
            tqdm.write(f"resuming {job.role} from epoch {start_epoch} ({out})")

    labeled_iter = _cycle(lab_loader)
    t_job = time.perf_counter()
    for epoch in range(start_epoch, total_epochs):
        finetune = epoch >= cfg.epochs
        if finetune and epoch == cfg.epochs:
            # short fine-tune on labeled data only, constant small lr (paper's optional last step)
            opt = _make_optimizer(core, cfg, student.finetune_lr)
            sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        for loader in (lab_loader, unl_loader):
            sampler = getattr(loader, "sampler", None) if loader is not None else None
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        model.train()
        if hooks.fail_at_epoch is not None and epoch == hooks.fail_at_epoch:
            marker = out / f".failed-once-{epoch}"
            if not marker.exists():
                marker.write_text("injected failure\n")
                raise RuntimeError(f"injected failure in epoch {epoch}")
        t0 = time.perf_counter()
        n_images, loss_sum, parts_sum, correct, seen = 0, 0.0, {"loss_labeled": 0.0, "loss_unlabeled": 0.0}, 0, 0
        n_steps = steps_per_epoch if not finetune else max(1, len(labeled_ds) // lab_bs)
        unl_iter = iter(unl_loader) if (unl_loader is not None and not finetune) else None
        bar = tqdm(
            range(n_steps),
            desc=f"{job.role} gen{job.generation} epoch {epoch + 1}/{total_epochs}" + (" (fine-tune)" if finetune else ""),
            disable=not (job.progress and job.step_bars and hooks.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for _ in bar:
            lb = _batch(next(labeled_iter), device)
            if lb is None:
                continue
            x_l, y_l = lb
            if unl_iter is not None:
                try:
                    ub = _batch(next(unl_iter), device)
                except StopIteration:
                    unl_iter = iter(unl_loader)
                    ub = _batch(next(unl_iter), device)
                x_u, p_u = ub if ub is not None else (x_l[:0], torch.zeros(0, spec.num_classes, device=device))
                logits = model(torch.cat([x_l, x_u]))
                logits_l, logits_u = logits[: len(x_l)], logits[len(x_l) :]
                loss, parts = student_loss(
                    logits_l, y_l, logits_u, p_u, mode=student.loss, temperature=student.temperature,
                    alpha=student.alpha, unlabeled_weight=student.unlabeled_weight, label_smoothing=cfg.label_smoothing,
                )
                n_batch = len(x_l) + len(x_u)
            else:
                logits_l = model(x_l)
                loss = F.cross_entropy(logits_l, y_l, label_smoothing=cfg.label_smoothing)
                parts = {"loss_labeled": float(loss.detach()), "loss_unlabeled": 0.0}
                n_batch = len(x_l)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} in epoch {epoch + 1}; lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not finetune:
                sched.step()
            if ema is not None:
                ema.update_parameters(core)
            n_images += n_batch
            loss_sum += float(loss.detach()) * n_batch
            for k in parts_sum:
                parts_sum[k] += parts[k] * n_batch
            correct += int((logits_l.argmax(1) == y_l).sum())
            seen += len(y_l)
            bar.set_postfix(loss=f"{loss_sum / max(n_images, 1):.3f}", acc=f"{correct / max(seen, 1):.3f}")
        bar.close()
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "phase": "finetune" if finetune else "train",
            "lr": opt.param_groups[0]["lr"],
            "train_loss": loss_sum / max(n_images, 1),
            "loss_labeled": parts_sum["loss_labeled"] / max(n_images, 1),
            "loss_unlabeled": parts_sum["loss_unlabeled"] / max(n_images, 1),
            "train_acc": correct / max(seen, 1),
            "seconds": seconds,
            "images_per_s": n_images * hooks.world_size / max(seconds, 1e-9),
        }
        last = epoch == total_epochs - 1
        if job.test is not None and hooks.is_main and (last or (epoch + 1) % cfg.eval_every == 0):
            eval_model = ema.module if ema is not None else core
            m = evaluate(eval_model, job.test, eval_tf, batch_size=256, device=device, classes=spec.classes, progress=False)
            row["test_acc"] = m["top1"]
        history.append(row)
        state = {
            "model": core.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "history": to_plain(history),
            "epoch": epoch,
            "rng": torch.get_rng_state(),
        }
        blob = _state_bytes(state)
        if hooks.is_main:
            with atomic_path(last_path) as tmp:
                tmp.write_bytes(blob)
            if job.progress:
                tqdm.write(
                    f"{job.role} gen{job.generation} epoch {epoch + 1}/{total_epochs}: loss {row['train_loss']:.4f} "
                    f"train_acc {row['train_acc']:.4f}" + (f" test_acc {row['test_acc']:.4f}" if "test_acc" in row else "")
                    + f" ({row['images_per_s']:.0f} img/s)"
                )
        if hooks.report is not None:
            hooks.report(row, blob)

    final_model = ema.module if ema is not None else core
    metrics: dict[str, Any] = {
        "role": job.role,
        "generation": job.generation,
        "model": spec.name,
        "epochs": total_epochs,
        "train_seconds": sum(r["seconds"] for r in history),
        "images_per_s": float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
        "labeled_images": len(job.labeled),
        "pseudo_labeled_images": int(pseudo.weights.sum()) if use_pseudo else 0,
        "wall_seconds_this_session": time.perf_counter() - t_job,
    }
    if hooks.is_main:
        if job.test is not None:
            test_metrics = evaluate(final_model, job.test, eval_tf, batch_size=256, device=device, classes=spec.classes, progress=job.progress and job.step_bars)
            metrics.update({f"test_{k}" if k != "top1" else "test_acc": v for k, v in test_metrics.items()})
        metrics["checkpoint_id"] = checkpoint_id(final_model, job.generation, job.role)
        write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
        write_json(out / "metrics.json", metrics)
        save_checkpoint(out / "model.pt", final_model, spec, metrics=metrics, config=job.config, generation=job.generation, role=job.role)
        last_path.unlink(missing_ok=True)
    return metrics


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
