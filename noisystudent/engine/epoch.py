"""One epoch of optimizer steps, and its history row (losses by part, accuracy, speed)."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .setup import Training
from .step import StepResult, UnlabeledBatches, next_batch, train_step


class EpochMeter:
    """Running sums of an epoch; they stay on the device (no sync per step on a GPU) and are read once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.n_images, self.seen = 0, 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.parts_sum: dict[str, torch.Tensor] = {}

    def add(self, r: StepResult) -> None:
        n = r.n_images
        self.n_images += n
        self.loss_sum += r.loss.detach().float() * n
        for k, v in r.parts.items():
            self.parts_sum[k] = self.parts_sum.get(k, 0) + torch.as_tensor(v, device=self.device).detach().float() * n
        self.correct += (r.logits.argmax(1) == r.y_hard).sum()
        self.seen += r.n_labeled

    def postfix(self) -> dict:
        return {"loss": f"{float(self.loss_sum) / max(self.n_images, 1):.3f}",
                "acc": f"{int(self.correct) / max(self.seen, 1):.3f}"}

    def row(self, seconds: float, world_size: int) -> dict:
        n = max(self.n_images, 1)
        row = {"train_loss": float(self.loss_sum) / n, "loss_labeled": 0.0, "loss_unlabeled": 0.0}
        row.update({k: float(v) / n for k, v in self.parts_sum.items()})
        row.update({"train_acc": int(self.correct) / max(self.seen, 1), "seconds": seconds,
                    "images_per_s": self.n_images * world_size / max(seconds, 1e-9)})
        return row


def start_epoch(tr: Training, epoch: int) -> bool:
    """Ready the parts for ``epoch`` (fine-tune optimizer, sampler order, training mode, the method's
    schedule, the runner's hook); returns whether it is a labeled fine-tune epoch."""
    job, cfg = tr.job, tr.job.train_cfg
    finetune = epoch >= cfg.epochs
    if finetune and epoch == cfg.epochs:
        tr.state.start_finetune(cfg, job.student.finetune_lr)
    tr.data.set_epoch(epoch)
    tr.trainee.model.train()
    tr.trainee.core.method.set_epoch(epoch, cfg.epochs)  # a method's schedule (FitNet's hint stage) follows the epoch
    tr.hooks.epoch_started(job, epoch)
    return finetune


def _no_image_read(tr: Training, epoch: int) -> UserError:
    job = tr.job
    return UserError(f"{job.role} of generation {job.generation}: epoch {epoch + 1} read no image at all "
                     f"({len(job.labeled)} labeled images listed"
                     + (f", e.g. {job.labeled.image_id(0)!r}" if len(job.labeled) else "") + "); "
                     "check that the data paths exist where training runs")


def run_epoch(tr: Training, epoch: int, labeled_iter) -> dict:
    """One epoch of optimizer steps; returns its history row (losses by part, accuracy, speed)."""
    job, device, trainee = tr.job, tr.device, tr.trainee
    finetune = start_epoch(tr, epoch)
    t0 = time.perf_counter()
    meter = EpochMeter(device)
    unlabeled = UnlabeledBatches(tr.data.unlabeled, device, tr.data.device_noise) if (tr.data.unlabeled is not None and not finetune) else None
    teacher = trainee.teacher if not finetune else None
    bar = tqdm(range(tr.plan.epoch_steps[epoch] if not finetune else tr.data.finetune_steps),
               desc=f"{job.role} gen{job.generation} epoch {epoch + 1}/{tr.total_epochs}" + (" (fine-tune)" if finetune else ""),
               disable=not (job.progress and job.step_bars and tr.hooks.is_main), leave=False, dynamic_ncols=True)
    for _ in bar:
        batch = next_batch(labeled_iter, unlabeled, device, tr.data.device_noise)
        if batch is None:
            continue
        meter.add(train_step(trainee.model, trainee.core, batch, teacher, trainee.teaching, tr.state, tr.precision,
                             finetune, epoch))
        if bar.disable is False and device.type == "cpu":
            bar.set_postfix(**meter.postfix())
    bar.close()
    if meter.n_images == 0:  # every batch came back empty: no image could be read (a wrong path, say)
        raise _no_image_read(tr, epoch)
    if not torch.isfinite(meter.loss_sum):
        raise FloatingPointError(f"loss is not finite in epoch {epoch + 1}; lower train.lr")
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "phase": "finetune" if finetune else "train",
            "lr": tr.state.optimizer.param_groups[0]["lr"], **meter.row(seconds, tr.hooks.world_size)}
