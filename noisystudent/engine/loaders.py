"""The job's data: transforms, the labeled and pseudo-labeled loaders, and moving batches to the device."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.torch_dataset import SourceDataset, collate_skip_none
from ..distill.teaching import Teaching
from ..transforms import create_transform
from .job import TrainHooks, TrainJob


def worker_init(worker_id: int) -> None:
    """Seed numpy and ``random`` in a loader worker from torch's per-worker seed."""
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, num_workers: int, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A shuffling loader over this rank's share of ``dataset``
    (:class:`~noisystudent.data.samplers.ShuffleSampler`: 4 bytes an image where ``RandomSampler`` and
    ``DistributedSampler`` hold a Python int per image; duplicated pseudo-labels are positions of a
    :class:`~noisystudent.data.torch_dataset.RepeatedDataset`, not repeated indices)."""
    from ..data.samplers import ShuffleSampler

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
        worker_init_fn=worker_init,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),  # page-locked batches: the non_blocking copies in to_device overlap
    )


def cycle(loader: DataLoader):
    """``loader``'s batches without end (a new pass each time one ends)."""
    while True:
        yield from loader


def to_device(batch, device: torch.device, noise: Optional[Callable] = None):
    """``(x, y)`` of a collated batch on ``device``, or None for an empty one (every image unreadable).
    ``noise`` (``noise.backend: device``) turns the uint8 images into their noised views once there."""
    if batch is None or len(batch) == 0 or batch[0] is None or len(batch[0]) == 0:
        return None
    x, y, _idx = batch
    x = x.to(device, non_blocking=True)
    return (noise(x) if noise is not None else x), y.to(device, non_blocking=True)


@dataclass
class JobData:
    """The loaders of a job and what it evaluates with."""

    labeled: DataLoader
    unlabeled: Optional[DataLoader]  # pseudo-labeled images, for a student that has some
    eval_transform: Callable
    n_pseudo: int  # pseudo-labeled images with their duplicates (0 without)
    finetune_steps: int  # steps of one labeled fine-tune epoch
    device_noise: Optional[Callable] = None  # noise.backend device: uint8 images -> noised views (batch_noise.py)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: each sampler's order follows the epoch."""
        for loader in (self.labeled, self.unlabeled):
            sampler = getattr(loader, "sampler", None) if loader is not None else None
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)


def build_data(job: TrainJob, hooks: TrainHooks, teaching: Teaching, use_pseudo: bool,
               device: Optional[torch.device] = None) -> JobData:
    """Noised training transforms (views drawn at the teaching size), the clean eval transform, and the loaders;
    each DDP worker sees 1/world_size of the data per epoch."""
    cfg, spec = job.train_cfg, job.spec
    vs = teaching.view_size  # views are drawn at the larger model's side and resized per model
    train_tf = teaching.train_transform(create_transform(vs, spec.in_chans, spec.mean, spec.std, job.model_cfg.noise),
                                        create_transform(vs, spec.in_chans, spec.mean, spec.std, None))
    # -- noise.backend (issue 28): with `device` the loaders give uint8 images and the noise runs per batch
    from ..batch_noise import device_noise_for

    device_noise, uint8_tf = device_noise_for(job.model_cfg.noise, teaching, spec, device or torch.device("cpu"))
    train_tf = uint8_tf or train_tf
    # --
    eval_tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    labeled_ds = SourceDataset(job.labeled, train_tf)
    unl_loader, n_pseudo = None, 0
    if use_pseudo:
        from ..data.torch_dataset import RepeatedDataset

        pseudo = job.pseudo
        unl_ds = SourceDataset(pseudo.source, train_tf, targets=pseudo.dataset_targets())
        # duplicates by binary search over cumulative weights, not an expanded list of indices (issue 17)
        expanded = RepeatedDataset(unl_ds, pseudo.weights)
        unl_loader = hooks.prepare_loader(make_loader(expanded, job.unlabeled_batch, cfg.num_workers, job.seed + 1,
                                                      hooks.rank, hooks.world_size))
        n_pseudo = int(pseudo.weights.sum())
    lab_loader = hooks.prepare_loader(make_loader(labeled_ds, cfg.batch_size, cfg.num_workers, job.seed, hooks.rank,
                                                  hooks.world_size))
    return JobData(labeled=lab_loader, unlabeled=unl_loader, eval_transform=eval_tf, n_pseudo=n_pseudo,
                   finetune_steps=max(1, len(labeled_ds) // cfg.batch_size), device_noise=device_noise)
