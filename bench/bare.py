"""The bare PyTorch loops every benchmark compares with: the loops anyone would write by hand.

- :func:`train`: a training loop with the same model (``create_model``), the same albumentations transform
  (``create_transform``) over a plain ``Dataset`` on the uint8 image array (:class:`ArrayDataset`), a
  ``DataLoader`` (shuffle, drop_last), nesterov SGD, optional autocast with a ``GradScaler`` for fp16 and,
  with a ``teacher``, Hinton's distillation with the frozen teacher under ``no_grad`` on the same batch;
  timed over a number of steps, or per epoch (the last epoch's rate).
- :func:`ceiling_train`: the same step on device-resident tensors, no data loading: what the device can do.
- :func:`label`: the inference loop of labeling: batches to the device (optionally fp16, channels-last),
  forward, softmax, back to numpy.
- :func:`forward`: the model's forward alone on one device-resident batch: the labeling ceiling.

Nothing of the project is used but its models, transforms and checkpoint files: a bare loop that called our
training or labeling code would compare that code with itself. No Ray here (``bench.gpu_check`` uses this
module on a machine without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .harness import Stopwatch, rate, sync


class ArrayDataset(Dataset):
    """The bare loop's data set: an ``(N, H, W, C)`` uint8 array, labels and a transform. Nothing else."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.labels[i])


def forever(loader: Iterable) -> Iterator:
    """Batches without end, a new epoch (new shuffle, new augmentation) each time round. Not
    ``itertools.cycle``, which would replay the first epoch's already transformed tensors."""
    while True:
        yield from loader


def clean_noise() -> Any:
    """Noise that does nothing: ``create_transform`` then returns exactly the eval transform."""
    from noisystudent.config import NoiseConfig

    return NoiseConfig(randaugment_n=0, hflip=False, crop_padding=0, random_erasing=0.0)


def model_of(spec: Any, device: Any, channels_last: bool = False) -> torch.nn.Module:
    """``spec``'s model from ``create_model`` (its drop rates included), on ``device``, in train mode;
    ``channels_last``: its weights in the NHWC memory format, as a job's (``train.channels_last``)."""
    from noisystudent.models import create_model

    model = create_model(spec.name, num_classes=spec.num_classes, in_chans=spec.in_chans, drop_rate=spec.drop_rate,
                         drop_path_rate=spec.drop_path_rate).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def load_teacher(path: Path, device: Any, channels_last: bool = True) -> torch.nn.Module:
    """A checkpoint file's model rebuilt by hand (``create_model`` + ``load_state_dict``), eval mode, frozen;
    NHWC weights as a job's online teacher (``train.channels_last``) unless ``channels_last`` is false."""
    from noisystudent.models import create_model

    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec = payload["spec"]
    teacher = create_model(spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"])
    teacher.load_state_dict(payload["state_dict"])
    teacher = teacher.to(device).eval()
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Optional[Any], x: torch.Tensor, y: torch.Tensor,
         amp_dtype: Optional[torch.dtype] = None, teacher: Optional[torch.nn.Module] = None, temperature: float = 4.0,
         alpha: float = 0.9, label_smoothing: float = 0.0) -> None:
    """One optimizer step on a device batch: cross-entropy, or with ``teacher`` Hinton's
    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``; under autocast to
    ``amp_dtype`` when given; through ``scaler`` (a ``GradScaler``) unless it is None."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x)
        s = model(x)
        loss = F.cross_entropy(s, y, label_smoothing=label_smoothing)
        if teacher is not None:
            T = temperature
            kd = F.kl_div(F.log_softmax(s.float() / T, dim=1), F.softmax(t.float() / T, dim=1), reduction="batchmean")
            loss = alpha * T * T * kd + (1 - alpha) * loss
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
        return
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def _sgd(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def _scaler(device: Any, amp_dtype: Optional[torch.dtype]) -> Any:
    return torch.amp.GradScaler(torch.device(device).type, enabled=amp_dtype == torch.float16)


def _timed(batches: Iterable, fn: Callable[[Any, Any], int], device: Any) -> float:
    """Images/s of ``fn`` over ``batches``: from asking for the first batch to the last step's end."""
    sync(device)
    n = 0
    with Stopwatch() as sw:
        for x, y in batches:
            n += fn(x, y)
        sync(device)
    return n / sw.seconds


def train(spec: Any, noise: Any, images: np.ndarray, labels: np.ndarray, device: Any, *, batch_size: int,
          lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4, steps: Optional[int] = None,
          epochs: int = 1, workers: int = 0, amp_dtype: Optional[torch.dtype] = None,
          teacher: Optional[torch.nn.Module] = None, temperature: float = 4.0, alpha: float = 0.9,
          label_smoothing: float = 0.0, seed: int = 0, channels_last: bool = True) -> float:
    """Images/s of the hand-written training loop (see the module's docstring).

    ``channels_last`` (default, as a job's ``train.channels_last``): the model in the NHWC memory format, so
    the ratio to a job measures the pipeline around the step, not the layout of the weights.

    ``steps``: one timed span of that many steps over batches drawn without end (:func:`forever`); else
    ``epochs`` epochs, each timed, the last one's rate returned (the first starts loader workers and warms
    cuDNN)."""
    from noisystudent.transforms import create_transform

    torch.manual_seed(seed)
    model = model_of(spec, device, channels_last)
    transform = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, noise)
    loader = DataLoader(ArrayDataset(images, labels, transform), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    opt = _sgd(model, lr, momentum, weight_decay)
    scaler = _scaler(device, amp_dtype)

    def one(x: torch.Tensor, y: torch.Tensor) -> int:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        step(model, opt, scaler, x, y, amp_dtype, teacher, temperature, alpha, label_smoothing)
        return len(x)

    if steps is not None:
        batches = forever(loader)
        return _timed((next(batches) for _ in range(steps)), one, device)
    result = 0.0
    for _ in range(epochs):
        result = _timed(loader, one, device)
    return result


def ceiling_train(spec: Any, batch_size: int, steps: int, device: Any, amp_dtype: Optional[torch.dtype] = None,
                  channels_last: bool = False) -> float:
    """Images/s of :func:`step` on one device-resident random batch: the device with no data loading at all."""
    torch.manual_seed(0)
    model = model_of(spec, device)
    x = torch.randn(batch_size, spec.in_chans, spec.image_size, spec.image_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=device)
    opt = _sgd(model, 0.05, 0.9, 5e-4)
    scaler = _scaler(device, amp_dtype)

    def run(k: int) -> int:
        for _ in range(k):
            step(model, opt, scaler, x, y, amp_dtype)
        return k * batch_size

    run(3)
    return rate(lambda: run(steps), device)


@torch.inference_mode()
def label(model: torch.nn.Module, batches: Iterable[torch.Tensor], device: Any, half: bool = False,
          channels_last: bool = False) -> int:
    """The labeling loop: each host batch to ``device`` (fp16, channels-last when asked), forward, softmax,
    back to numpy (which waits for a GPU); returns the images labeled."""
    n = 0
    for x in batches:
        x = x.to(device, non_blocking=True)
        if half:
            x = x.half()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n += len(torch.softmax(model(x).float(), dim=1).cpu().numpy())
    return n


def label_loader(images: np.ndarray, spec: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """``images`` through ``spec``'s eval transform in batches: a plain ``DataLoader`` over :class:`ArrayDataset`."""
    from noisystudent.transforms import create_transform

    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    loader = DataLoader(ArrayDataset(images, np.zeros(len(images), np.int64), tf), batch_size=batch_size,
                        shuffle=False, num_workers=0)
    return (x for x, _ in loader)


@torch.inference_mode()
def forward(model: torch.nn.Module, x: torch.Tensor, times: int, softmax: bool = False) -> int:
    """``model(x)`` ``times`` times on a device-resident batch (and the softmax when asked); the images."""
    for _ in range(times):
        out = model(x)
        if softmax:
            torch.softmax(out.float(), dim=1)
    return times * len(x)
