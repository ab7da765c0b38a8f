"""Synthetic defects with known masks: scratches, blotches and cut-and-pasted patches.

For measuring a detector without a labeled defect set (the anomaly benchmark on Fashion-MNIST) and for
tests. Each defect is placed on the object (centred on a pixel brighter than the background when there
is one), drawn in an intensity that contrasts with what it covers, and redrawn (up to ``tries`` times)
until it changes the masked pixels by at least ``min_change`` grey levels on average, so every mask marks
a visible defect:

- ``scratch``: a straight line, 1/28 of the image wide (at least 1 pixel), 30-70 % of the image long, dark
  where it crosses bright pixels and bright where it crosses dark ones;
- ``blotch``: a filled ellipse, radii 8-18 % of the image, rotated;
- ``patch``: a rectangle of 15-30 % of the image cut from a donor image (another normal image: the
  CutPaste idea, Li et al. 2021) or, without one, from elsewhere in the same image, pasted on the object.

Images are HW or HWC uint8; masks are HW uint8 with 1 on the defect.
"""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("scratch", "blotch", "patch")


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) if img.ndim == 2 else img.astype(np.float32).mean(axis=2)


def _object_point(img: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(x, y) of a random pixel on the object (brighter than the background), else anywhere."""
    g = _gray(img)
    ys, xs = np.nonzero(g > max(40.0, float(g.mean())))
    if len(xs) == 0:
        return int(rng.integers(g.shape[1])), int(rng.integers(g.shape[0]))
    k = int(rng.integers(len(xs)))
    return int(xs[k]), int(ys[k])


def _contrast_value(under: np.ndarray, rng: np.random.Generator) -> int:
    """A grey level far from the mean of what the defect covers: dark on bright, bright on dark."""
    return int(rng.integers(0, 50)) if float(under.mean()) > 110 else int(rng.integers(190, 256))


def _paint(img: np.ndarray, mask: np.ndarray, value: int) -> np.ndarray:
    out = img.copy()
    out[mask.astype(bool)] = value
    return out


def _scratch(img: np.ndarray, rng: np.random.Generator, donor: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    size = min(h, w)
    cx, cy = _object_point(img, rng)
    length = rng.uniform(0.3, 0.7) * size
    angle = rng.uniform(0, np.pi)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    mask = np.zeros((h, w), np.uint8)
    cv2.line(mask, (int(round(cx - dx)), int(round(cy - dy))), (int(round(cx + dx)), int(round(cy + dy))), 1,
             thickness=max(1, round(size / 28)))
    # per pixel: dark where it crosses bright, bright where it crosses dark, so the whole line shows
    dark, bright = int(rng.integers(0, 50)), int(rng.integers(190, 256))
    out = img.copy()
    on = mask > 0
    out[on] = np.where((_gray(img) > 110)[on][..., None] if img.ndim == 3 else (_gray(img) > 110)[on], dark, bright)
    return out, mask


def _blotch(img: np.ndarray, rng: np.random.Generator, donor: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    size = min(h, w)
    cx, cy = _object_point(img, rng)
    axes = (max(1, int(rng.uniform(0.08, 0.18) * size)), max(1, int(rng.uniform(0.08, 0.18) * size)))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return _paint(img, mask, _contrast_value(_gray(img)[mask > 0], rng)), mask


def _patch(img: np.ndarray, rng: np.random.Generator, donor: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    src = donor if donor is not None and donor.shape == img.shape else img
    ph = max(2, int(rng.uniform(0.15, 0.3) * h))
    pw = max(2, int(rng.uniform(0.15, 0.3) * w))
    sx, sy = _object_point(src, rng)
    sx, sy = int(np.clip(sx - pw // 2, 0, w - pw)), int(np.clip(sy - ph // 2, 0, h - ph))
    piece = src[sy:sy + ph, sx:sx + pw]
    if src is img:  # the same image: turn the piece so it does not fit back where it came from
        piece = np.ascontiguousarray(np.rot90(piece, 2))
    tx, ty = _object_point(img, rng)
    tx, ty = int(np.clip(tx - pw // 2, 0, w - pw)), int(np.clip(ty - ph // 2, 0, h - ph))
    out = img.copy()
    out[ty:ty + ph, tx:tx + pw] = piece
    mask = np.zeros((h, w), np.uint8)
    mask[ty:ty + ph, tx:tx + pw] = 1
    return out, mask


_MAKERS = {"scratch": _scratch, "blotch": _blotch, "patch": _patch}


def add_defect(image: np.ndarray, rng: np.random.Generator, kind: Optional[str] = None,
               donor: Optional[np.ndarray] = None, min_change: float = 20.0, tries: int = 10
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(defective image, mask, kind)``; ``kind`` None draws one of :data:`DEFECT_KINDS`.

    The last try is kept even if it changes the image by less than ``min_change`` (an all-white image
    cannot take a bright scratch); callers that need the guarantee check ``mask`` against the change."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"image must be HW or HWC uint8, got {img.dtype} {img.shape}")
    kind = kind or str(rng.choice(DEFECT_KINDS))
    if kind not in _MAKERS:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")
    out, mask = img, np.zeros(img.shape[:2], np.uint8)
    for _ in range(max(1, tries)):
        out, mask = _MAKERS[kind](img, rng, donor)
        on = mask > 0
        if on.any() and float(np.abs(_gray(out)[on] - _gray(img)[on]).mean()) >= min_change:
            break
    return out, mask, kind


def make_defects(images: np.ndarray, rng: np.random.Generator, kinds: Sequence[str] = DEFECT_KINDS,
                 donors: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A defect on each of ``images`` (``(N, H, W[, C])``), kinds in turn; patch donors drawn from ``donors``
    (e.g. other normal images) when given. Returns ``(defective, masks (N, H, W), kinds)``."""
    out, masks, names = np.empty_like(images), np.zeros(images.shape[:3], np.uint8), []
    for i, img in enumerate(images):
        donor = donors[int(rng.integers(len(donors)))] if donors is not None and len(donors) else None
        out[i], masks[i], kind = add_defect(img, rng, kinds[i % len(kinds)], donor=donor)
        names.append(kind)
    return out, masks, names
