"""An :class:`ImageSource` as a torch ``Dataset`` that survives unreadable images.

Why return ``None`` instead of raising: one corrupt file in a million must not stop an epoch (or, under
Ray Train, make a worker fail and restart). :func:`collate_skip_none` drops the ``None`` items.

The training loop's contract with :func:`collate_skip_none`:

- a batch is the usual ``(images, targets, indices)`` with fewer rows than requested when some images
  were unreadable (``len(indices)`` tells how many arrived);
- a batch in which *every* image was unreadable comes back as :data:`EMPTY_BATCH` (``None``); the loop
  must skip it: ``if batch is None: continue``.

:attr:`SourceDataset.skipped` counts unreadable images *in the process that loaded them*: with
``DataLoader(num_workers > 0)`` each worker holds its own copy of the dataset, so the main process's
counter stays 0. Count dropped rows from batch sizes (requested minus ``len(indices)``) when the total
matters.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import ImageDecodeError
from .base import ImageSource

log = logging.getLogger(__name__)

#: What :func:`collate_skip_none` returns when every item of a batch was unreadable.
EMPTY_BATCH = None

Transform = Callable[..., Any]


def _to_tensor(image: Any) -> torch.Tensor:
    """A transform's output as a CHW float tensor; HWC uint8 arrays are scaled to [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    return t.float().div_(255.0) if arr.dtype == np.uint8 else t.float()


def _is_albumentations(transform: Any) -> bool:
    return type(transform).__module__.startswith("albumentations")


def apply_transform(transform: Optional[Transform], image: Any) -> torch.Tensor:
    """``image`` through ``transform`` (albumentations, called as ``transform(image=img)["image"]``; any
    other callable; or None) as a CHW float tensor: how a dataset item and a teacher's paired view are made."""
    if transform is None:
        out = image
    elif _is_albumentations(transform):
        out = transform(image=image)["image"]
    else:
        out = transform(image)
    return _to_tensor(out)


class SourceDataset(Dataset):
    """Items ``(image_tensor, target, index)`` of ``source``; ``None`` for an unreadable image.

    - ``transform``: an albumentations transform (called as ``transform(image=img)["image"]``), any
      callable on an HWC uint8 array, or None (plain conversion to a CHW float tensor in [0, 1]).
      A numpy result is converted to a CHW float tensor the same way.
    - ``targets``: overrides the source's labels, e.g. pseudo-labels aligned with the source's indices:
      an int array ``(N,)`` of hard labels (int64 tensor targets), a float array ``(N, C)`` of soft
      labels (float32 tensor targets), or :class:`TopKTargets` (top-k classes and probabilities as
      stored, expanded to a dense float32 row per item, so a batch at a time). Without it the target is
      ``source.labels[i]``, or ``-1`` for an unlabeled source.
    - ``index`` is the position in ``source`` so callers can map a row back to its image id.
    """

    def __init__(self, source: ImageSource, transform: Optional[Transform] = None,
                 targets: Optional[np.ndarray] = None) -> None:
        self.source = source
        self.transform = transform
        if isinstance(targets, TopKTargets):
            if len(targets) != len(source):
                raise ValueError(f"targets has {len(targets)} rows but the source has {len(source)} images")
        elif targets is not None:
            targets = np.asarray(targets)
            if len(targets) != len(source):
                raise ValueError(f"targets has {len(targets)} rows but the source has {len(source)} images")
            if targets.ndim not in (1, 2):
                raise ValueError(f"targets must be (N,) class indices or (N, C) probabilities, got shape {targets.shape}")
            if targets.ndim == 1 and not np.issubdtype(targets.dtype, np.integer):
                raise ValueError(f"1-D targets must be integer class indices, got {targets.dtype}")
            targets = targets.astype(np.int64) if targets.ndim == 1 else targets.astype(np.float32)
        self.targets = targets
        self.skipped = 0  # per process: see the module docstring

    def __len__(self) -> int:
        return len(self.source)

    def target(self, i: int) -> torch.Tensor:
        if isinstance(self.targets, TopKTargets):
            return self.targets.dense(i)
        if self.targets is not None:
            return torch.as_tensor(self.targets[i])
        labels = self.source.labels
        return torch.tensor(int(labels[i]) if labels is not None else -1, dtype=torch.int64)

    def targets_of(self, idx: np.ndarray) -> torch.Tensor:
        """The targets of positions ``idx`` as one tensor (what collating their :meth:`target` rows gives)."""
        if isinstance(self.targets, TopKTargets):
            return self.targets.dense_rows(idx)
        if self.targets is not None:
            return torch.from_numpy(np.ascontiguousarray(self.targets[idx]))
        labels = self.source.labels
        if labels is None:
            return torch.full((len(idx),), -1, dtype=torch.int64)
        return torch.from_numpy(np.asarray(labels)[idx].astype(np.int64))

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """A whole batch at once, when the source holds its pixels in one array (``load_batch``) and the
        transform works on batches (``transform.batch``, e.g. the device noise backend's uint8 transform):
        one fancy index and one tensor instead of a ``__getitem__``, a transform call and a collate per
        image. PyTorch's ``DataLoader`` calls this with a batch's indices when a dataset defines it; a
        source or transform without the batch path gives the per-image items, as before."""
        batch_tf = getattr(self.transform, "batch", None)
        idx = np.asarray(indices, dtype=np.int64)
        images = self.source.load_batch(idx) if batch_tf is not None and len(idx) else None
        if images is None:
            return [self[int(i)] for i in idx]
        return Collated((batch_tf(images), self.targets_of(idx), torch.from_numpy(idx)))

    def __getitem__(self, i: int) -> Optional[tuple[torch.Tensor, torch.Tensor, int]]:
        i = int(i)
        try:
            image = self.source.load(i)
        except ImageDecodeError as exc:
            self.skipped += 1
            if self.skipped <= 5:
                log.warning("skipping unreadable image %s: %s", exc.image_id, exc.reason)
            return None
        return apply_transform(self.transform, image), self.target(i), i


class TopKTargets:
    """Soft pseudo-labels as stored: ``(N, k)`` classes and probabilities, expanded one row at a time.

    A dense ``(N, C)`` float32 matrix is 4·C bytes an image (5.2 GB for 1.3M images and 1,000 classes);
    this holds 8·k (40 MB for 10^6 images at k = 5) and :meth:`dense` builds the ``(C,)`` row of one item
    when the loader asks for it, so dense targets exist one batch at a time. The row is renormalised to
    sum to 1, exactly as :func:`pseudo_labels.store.soft_targets` does (the tail beyond k is dropped).
    ``hard``: the one-hot row of the top class instead. Padding entries (class < 0) are ignored.
    """

    def __init__(self, classes: np.ndarray, probs: np.ndarray, num_classes: int, hard: bool = False) -> None:
        classes = np.asarray(classes)
        probs = np.asarray(probs, dtype=np.float32)
        if classes.ndim != 2 or classes.shape != probs.shape:
            raise ValueError(f"top-k classes and probs must be (N, k) of one shape, got {classes.shape} and {probs.shape}")
        if classes.size and classes.max() >= num_classes:
            raise ValueError(f"top-k targets name class {int(classes.max())} but num_classes={num_classes}")
        self.classes = classes.astype(np.int32, copy=False)
        self.probs = probs
        self.num_classes = int(num_classes)
        self.hard = bool(hard)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def nbytes(self) -> int:
        return self.classes.nbytes + self.probs.nbytes

    def dense_rows(self, idx: np.ndarray) -> torch.Tensor:
        """:meth:`dense` of every position of ``idx`` as one ``(len(idx), C)`` tensor, without a Python loop."""
        c, p = self.classes[idx], self.probs[idx]
        ok = c >= 0
        out = np.zeros((len(idx), self.num_classes), dtype=np.float32)
        rows = np.arange(len(idx))[:, None].repeat(c.shape[1], 1)
        if self.hard:
            top = np.argmax(np.where(ok, p, -np.inf), axis=1)
            cls = c[np.arange(len(idx)), top]
            out[np.arange(len(idx)), np.where(ok.any(1), cls, 0)] = 1.0
            return torch.from_numpy(out)
        out[rows[ok], c[ok]] = p[ok]
        total = out.sum(1, keepdims=True)
        np.divide(out, total, out=out, where=total > 0)
        return torch.from_numpy(out)

    def dense(self, i: int) -> torch.Tensor:
        row = np.zeros(self.num_classes, dtype=np.float32)
        c, p = self.classes[i], self.probs[i]
        ok = c >= 0
        if self.hard:
            row[c[ok][np.argmax(p[ok])] if ok.any() else 0] = 1.0
            return torch.from_numpy(row)
        row[c[ok]] = p[ok]
        total = row.sum()
        if total > 0:
            row /= total
        return torch.from_numpy(row)


class RepeatedDataset(Dataset):
    """``dataset`` with item ``i`` repeated ``weights[i]`` times (the balancing duplicates), without an
    expanded index list: position ``j`` is found by binary search in the cumulative weights (8 bytes an
    image, not a Python int per duplicate). Position order equals ``np.repeat(arange(N), weights)``."""

    def __init__(self, dataset: Dataset, weights: np.ndarray) -> None:
        w = np.maximum(np.asarray(weights, dtype=np.int64), 0)
        if len(w) != len(dataset):
            raise ValueError(f"{len(w)} weights for a dataset of {len(dataset)}")
        self.dataset = dataset
        self.ends = np.cumsum(w)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, j: int):
        if not 0 <= j < len(self):
            raise IndexError(j)
        return self.dataset[int(np.searchsorted(self.ends, j, side="right"))]

    def __getitems__(self, positions: Sequence[int]) -> Any:
        """The positions' items through the wrapped dataset's batched fetch when it has one."""
        j = np.asarray(positions, dtype=np.int64)
        if len(j) and (j.min() < 0 or j.max() >= len(self)):
            raise IndexError(int(j.max()) if j.max() >= len(self) else int(j.min()))
        base = np.searchsorted(self.ends, j, side="right")
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(base) if getitems is not None else [self.dataset[int(i)] for i in base]


class Collated(tuple):
    """A batch a dataset's ``__getitems__`` already stacked: :func:`collate_skip_none` passes it through."""


def collate_skip_none(batch: list[Any]) -> Any:
    """``default_collate`` of the items that are not ``None``; :data:`EMPTY_BATCH` (``None``) if none
    are left, which the training loop skips. A :class:`Collated` batch (a dataset's batched fetch) is
    returned as it is."""
    if isinstance(batch, Collated):
        return tuple(batch) if len(batch[2]) else EMPTY_BATCH
    items = [b for b in batch if b is not None]
    if not items:
        return EMPTY_BATCH
    return default_collate(items)
