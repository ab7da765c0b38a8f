"""Batched model input: decode and resize image by image where a format needs it, everything else per batch.

Why this module exists. The labeling and scoring actors used to run the whole albumentations eval
transform (resize, normalise, to-tensor) on every image under the GIL, then stack the float tensors.
For small images that is almost all Python, so a thread pool over images made the actor *slower*
(threads queue on the GIL: 32k img/s with 1 decode thread and 9.8k with 8 for ResNet-14 on 28 px, on a
GPU that labels 488k img/s; ``docs/accelerator.md`` has the figures and the analysis). Here:

- *decode and fit* (file decode + resize to the model's side, uint8) is the only per-image work, and
  sources that hold their pixels in an array skip it: :meth:`ImageSource.load_batch` returns the whole
  batch in one fancy index. When several decode threads are asked for, each takes a *slice* of the batch
  (one task per thread, not per image), and OpenCV's own thread pool is set to one thread so that N
  Python threads do not each start a pool of all cores;
- *normalise* runs on the whole ``(N, H, W, C)`` uint8 batch where the model runs (the GPU, when there
  is one), after a pinned-memory, non-blocking copy: 1 byte a pixel crosses the bus instead of 4;
- :func:`prefetch` prepares the next batch in a background thread while the model runs on this one.

:class:`EvalInput` gives exactly what :func:`~noisystudent.transforms.create_transform` (``noise=None``)
gives, to float rounding: the same albumentations ``Resize`` (area when shrinking), then the same
``(x / 255 - mean) / std``; ``tests/test_feed.py`` checks it.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from .errors import ImageDecodeError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def check_stats(in_chans: int, mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` as float tuples, one value a channel (1 or 3 channels), every std > 0; ValueError otherwise."""
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
    mean_t = tuple(float(v) for v in mean)
    std_t = tuple(float(v) for v in std)
    if len(mean_t) != in_chans or len(std_t) != in_chans:
        raise ValueError(f"mean and std need {in_chans} value(s) each, got {len(mean_t)} and {len(std_t)}")
    if any(s <= 0 for s in std_t):
        raise ValueError(f"std values must be > 0, got {std_t}")
    return mean_t, std_t


class EvalInput:
    """A model's clean input: ``image_size`` x ``image_size``, ``in_chans`` channels, normalised by ``mean``/``std``.

    ``fit(img)`` is the per-image part (HWC uint8 in, HWC uint8 at the model's side out); :meth:`batch`
    turns a stack of fitted images into the normalised NCHW float batch on a device. Calling the object on
    one image gives the float CHW tensor of the eval transform (so it can stand where one is expected).
    """

    def __init__(self, image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.in_chans = int(image_size), int(in_chans)
        self.mean, self.std = check_stats(in_chans, mean, std)
        self._resize: Any = None  # albumentations' Resize, made (and albumentations imported) on the first image that needs it
        self._stats: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _resizer(self) -> Any:
        """The eval transform's resize. Built on first use: a source already at the model's side (arrays,
        Fashion-MNIST) never needs it, and importing albumentations costs a fresh labeling actor ~0.5 s."""
        if self._resize is None:
            import albumentations as A
            import cv2

            self._resize = A.Resize(self.image_size, self.image_size, interpolation=cv2.INTER_LINEAR,
                                    area_for_downscale="image", p=1.0)
        return self._resize

    @property
    def key(self) -> tuple:
        return (self.image_size, self.in_chans, self.mean, self.std)

    def fit(self, image: np.ndarray) -> np.ndarray:
        """``image`` (HW or HWC uint8) at the model's side, HWC; the albumentations resize of the eval transform."""
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] != self.in_chans or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, {self.in_chans}) uint8 image, got shape {image.shape} dtype {image.dtype}")
        if image.shape[0] == self.image_size and image.shape[1] == self.image_size:
            return image
        out = self._resizer()(image=np.ascontiguousarray(image))["image"]
        return out if out.ndim == 3 else out[:, :, None]

    def fit_batch(self, images: np.ndarray) -> np.ndarray:
        """A ``(N, H, W, C)`` uint8 batch at the model's side (no copy when it already is)."""
        if images.shape[1] == self.image_size and images.shape[2] == self.image_size:
            return images
        return np.stack([self.fit(im) for im in images]) if len(images) else images[:, :self.image_size, :self.image_size]

    def batch(self, x: torch.Tensor, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              channels_last: bool = False) -> torch.Tensor:
        """``(N, H, W, C)`` uint8 (host or device) -> normalised ``(N, C, H, W)`` ``dtype`` on ``device``."""
        device = torch.device(device)
        x = to_device(x, device).permute(0, 3, 1, 2)
        mean, std = self._device_stats(device)
        # float32 arithmetic (as albumentations), then the model's dtype. The permuted NHWC batch is converted
        # straight into the wanted layout: normalising the strided view first is 3-4x slower on 3 channels
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = x.to(torch.float32, memory_format=fmt).sub_(mean).div_(std)
        return out if dtype == torch.float32 else out.to(dtype)

    def _device_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        k = (device.type, device.index)
        if k not in self._stats:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
            self._stats[k] = (mean.to(device), std.to(device))
        return self._stats[k]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.batch(torch.from_numpy(np.ascontiguousarray(self.fit(np.asarray(image))))[None])[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stats": {}}


def to_device(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; from the host to a GPU through pinned memory with a non-blocking copy."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        if not x.is_pinned():
            x = x.pin_memory()
        return x.to(device, non_blocking=True)
    return x.to(device)


def limit_native_threads(decode_threads: int) -> None:
    """With several decode threads, OpenCV's own pool drops to one thread a call (else each Python thread's
    resize starts a pool of all cores and they fight over them)."""
    if decode_threads > 1:
        import cv2

        cv2.setNumThreads(1)


Decoded = tuple[dict[tuple, np.ndarray], list[int], list[tuple[str, str]]]


def decode_fit(reader: Any, ids: Sequence[str], raws: Sequence[Any], inputs: dict[tuple, EvalInput],
               pool: Optional[ThreadPoolExecutor] = None, threads: int = 1) -> Decoded:
    """Decode one batch and fit it to every input: ``({key: (n, S, S, C) uint8}, positions read, rejects)``.

    A reader with ``decode_batch(raws)`` (an in-memory array source) gives the whole batch at once; else
    each image is decoded with ``reader.decode(image_id, raw)``, on ``pool`` in ``threads`` slices when
    given. Unreadable images become ``(image_id, reason)`` rejects."""
    fast = getattr(reader, "decode_batch", None)
    arr = fast(raws) if fast is not None else None
    if arr is not None:
        return {k: inp.fit_batch(arr) for k, inp in inputs.items()}, list(range(len(ids))), []
    items = list(zip(ids, raws))

    def work(part: list[tuple[str, Any]]) -> list[tuple[Optional[dict], str]]:
        return [_decode_one(reader, inputs, item) for item in part]

    if pool is not None and threads > 1 and len(items) > 1:
        parts = [items[s::threads] for s in range(threads)]  # strided: equal work when sizes vary by position
        done = list(pool.map(work, parts))
        loaded: list = [None] * len(items)
        for s, res in enumerate(done):
            loaded[s::threads] = res
    else:
        loaded = work(items)
    ok = [k for k, (x, _) in enumerate(loaded) if x is not None]
    rejects = [(ids[k], why) for k, (x, why) in enumerate(loaded) if x is None]
    out = {key: (np.stack([loaded[k][0][key] for k in ok]) if ok else None) for key in inputs}
    return out, ok, rejects


def _decode_one(reader: Any, inputs: dict[tuple, EvalInput], item: tuple[str, Any]) -> tuple[Optional[dict], str]:
    image_id, raw = item
    try:
        img = reader.decode(image_id, raw)
    except ImageDecodeError as exc:
        return None, exc.reason or "unreadable"
    except (OSError, ValueError) as exc:  # a source that does not wrap its decoder's errors
        return None, f"{type(exc).__name__}: {exc}"
    return {key: inp.fit(img) for key, inp in inputs.items()}, ""


def pin(arrays: dict[tuple, Optional[np.ndarray]], device: torch.device) -> dict[tuple, Optional[torch.Tensor]]:
    """Host uint8 batches as tensors, pinned when they are bound for a GPU (done in the prefetch thread)."""
    out = {}
    for k, a in arrays.items():
        t = None if a is None else torch.from_numpy(np.ascontiguousarray(a))
        out[k] = t.pin_memory() if (t is not None and device.type == "cuda") else t
    return out


_END = object()


def prefetch(items: Iterable[Any], prepare: Callable[[Any], Any], depth: int = 1) -> Iterator[Any]:
    """``prepare(item)`` for each item, computed up to ``depth`` items ahead in a background thread, in order.

    The consumer runs the model on one batch while the next one is decoded (decoders and resizes release
    the GIL). An exception in ``prepare`` is raised in the consumer at that item."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((prepare(item), None))
        except BaseException as exc:  # handed to the consumer
            q.put((None, exc))
            return
        q.put((_END, None))

    t = threading.Thread(target=run, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            value, exc = q.get()
            if exc is not None:
                raise exc
            if value is _END:
                return
            yield value
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.05)


# --------------------------------------------------------------------------------------------------
# JPEG bytes decoded where the model runs


def _is_jpeg(raw: Any) -> bool:
    return isinstance(raw, (bytes, bytearray, memoryview)) and len(raw) > 3 and bytes(raw[:3]) == b"\xff\xd8\xff"


def resize_on_device(x: torch.Tensor, size: int) -> torch.Tensor:
    """One CHW uint8 image at ``size`` x ``size``: bilinear, antialiased when shrinking (close to, not
    bit-equal with, the CPU path's area resize)."""
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    y = torch.nn.functional.interpolate(x[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0]


def decode_jpeg_batch(reader: Any, ids: Sequence[str], raws: Sequence[Any], inputs: dict[tuple, EvalInput],
                      device: torch.device) -> tuple[dict[tuple, Optional[torch.Tensor]], list[int], list[tuple[str, str]]]:
    """Encoded bytes decoded by torchvision on ``device`` (nvJPEG on a GPU; EXIF orientation applied) and
    resized there: ``({key: (n, S, S, C) uint8 on device}, positions read, rejects)``. Bytes that are not
    JPEG, or that the batched decoder refuses, go through ``reader.decode`` one by one (PIL), so a corrupt
    file is one reject as on the host path."""
    from torchvision.io import ImageReadMode, decode_jpeg

    chans = next(iter(inputs.values())).in_chans
    mode = ImageReadMode.GRAY if chans == 1 else ImageReadMode.RGB
    jpeg = [k for k, r in enumerate(raws) if _is_jpeg(r)]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg:
        blobs = [torch.frombuffer(bytearray(raws[k]), dtype=torch.uint8) for k in jpeg]
        try:
            for k, img in zip(jpeg, decode_jpeg(blobs, mode=mode, device=device, apply_exif_orientation=True)):
                decoded[k] = img
        except RuntimeError:  # one bad file fails the batch call: decode these one by one to find it
            for k, blob in zip(jpeg, blobs):
                try:
                    decoded[k] = decode_jpeg(blob, mode=mode, device=device, apply_exif_orientation=True)
                except RuntimeError:
                    pass
    rejects: list[tuple[str, str]] = []
    for k in range(len(raws)):
        if k in decoded:
            continue
        try:
            arr = reader.decode(ids[k], raws[k])
        except ImageDecodeError as exc:
            rejects.append((ids[k], exc.reason or "unreadable"))
            continue
        except (OSError, ValueError) as exc:
            rejects.append((ids[k], f"{type(exc).__name__}: {exc}"))
            continue
        decoded[k] = to_device(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), device)
    ok = sorted(decoded)
    out: dict[tuple, Optional[torch.Tensor]] = {}
    for key, inp in inputs.items():
        out[key] = (torch.stack([resize_on_device(decoded[k], inp.image_size) for k in ok]).permute(0, 2, 3, 1)
                    if ok else None)
    return out, ok, rejects
