"""RandAugment (Cubuk et al. 2020) built from albumentations ops, and its timm-style config string.

Why our own table instead of ``torchvision.transforms.RandAugment``: the student's whole input pipeline
is albumentations on HWC uint8 numpy arrays (the same arrays the data sources return and Ray ships),
and torchvision's version works on PIL images / CHW tensors and uses a 0-10 level scale. Here the
magnitude ``m`` is on the Noisy Student paper's 0-30 scale, ``m=30`` is the strongest and ``m=0`` leaves
every op with a strength (Rotate, Color, Contrast, ...) unchanged. Every op's strength *increases*
with ``m`` (the original TensorFlow code made Solarize and Posterize weaker as the level grew; timm's
"increasing" variants fixed that and so do we).

What the caller may rely on, for ``rand_augment(n, m, in_chans)``:

- each image gets ``n`` ops drawn uniformly *with replacement* from :data:`RANDAUGMENT_OPS` and applied
  in the drawn order (as in the paper's reference code); ``n=0`` is the identity;
- an op with a signed strength (rotate, shear, translate, colour factors) gets the fixed magnitude
  ``level = m / 30`` of its range with a random sign, not a uniform draw below it;
- 1-channel images stay 1-channel: ``Color`` (saturation) has no meaning without colour and is left
  out of the table for ``in_chans=1`` so that no draw is wasted on a no-op;
- the input must be HWC uint8 (put RandAugment before ``Normalize``).

Per-op strength at ``level = m / 30`` (PIL factors are ``1 +/- 0.9 * level``, as in timm):

========== ===================================================================================
Identity   nothing
AutoContrast  PIL-style linear stretch (no strength)
Equalize   histogram equalisation per channel (no strength)
Rotate     +/- 30 * level degrees, mid-grey fill
Solarize   invert pixels >= 256 * (1 - level)
Color      saturation factor 1 +/- 0.9 * level (RGB only)
Posterize  keep 8 - round(4 * level) bits (8 .. 4)
Contrast   factor 1 +/- 0.9 * level around the mean grey level
Brightness factor 1 +/- 0.9 * level
Sharpness  PIL sharpness factor 1 + 0.9 * level (exact, via the Sharpen kernel); the blurring sign
           1 - 0.9 * level is approximated by a 3x3 Gaussian blur with the same centre weight
ShearX/Y   shear of 0.3 * level (tan of the angle), mid-grey fill
TranslateX/Y  +/- 0.45 * level of the image side, mid-grey fill
========== ===================================================================================

The grammar of :func:`parse_randaugment` (the timm convention): ``rand-m<M>-n<N>`` with the
``m``/``n`` parts in any order, each at most once; ``M`` is a number in [0, 30], ``N`` an integer in
[0, 14]; a missing part takes :class:`~noisystudent.config.NoiseConfig`'s default. ``rand-m9-n2``,
``rand-n3-m27`` and ``rand-m15`` are valid.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable

# albumentations asks PyPI for a newer version at import (a network call in every fresh Ray worker);
# clusters are often offline, so opt out unless the user decided otherwise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2

from .errors import UserError

#: The paper's 0-30 magnitude scale: ``m / MAX_MAGNITUDE`` is the fraction of each op's range used.
MAX_MAGNITUDE: float = 30.0
#: The upper bound on ``n`` that config validation and :func:`parse_randaugment` accept.
MAX_OPS: int = 14

# Geometric ops fill uncovered pixels with mid-grey, as the paper's reference implementation does.
_FILL = 128
_MAX_ROTATE_DEG = 30.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE = 0.45
_MAX_ENHANCE = 0.9


def _signed(make: Callable[[float], A.BasicTransform], value: float) -> A.BaseCompose | A.BasicTransform:
    """The op at ``+value`` or ``-value`` with equal probability (the paper's random sign)."""
    if value == 0:
        return A.NoOp(p=1.0)
    return A.OneOf([make(value), make(-value)], p=1.0)


def _affine(**kwargs) -> A.Affine:
    return A.Affine(border_mode=cv2.BORDER_CONSTANT, fill=_FILL, interpolation=cv2.INTER_LINEAR, p=1.0, **kwargs)


def _jitter(brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0) -> A.ColorJitter:
    """One torchvision/PIL-style enhance factor, fixed (``(f, f)`` ranges leave nothing random)."""
    return A.ColorJitter(
        brightness=(brightness, brightness),
        contrast=(contrast, contrast),
        saturation=(saturation, saturation),
        hue=(0.0, 0.0),
        p=1.0,
    )


def _sharpness(delta: float) -> A.BasicTransform:
    """PIL ``ImageEnhance.Sharpness`` with factor ``1 + delta``.

    PIL blends the image with its 3x3 smoothing ``S = [[1,1,1],[1,5,1],[1,1,1]] / 13``; the result is
    the kernel ``I + (delta / 13) * L`` with ``L`` the 8-neighbour Laplacian, which is exactly
    albumentations' Sharpen kernel with ``lightness=1`` and ``alpha=delta/13`` for ``delta > 0``.
    Sharpen cannot take a negative alpha, so the blurring side uses a 3x3 Gaussian whose centre weight
    equals that of ``(1 + delta) I - delta S`` (close to PIL, and built from a library op).
    """
    if delta >= 0:
        return A.Sharpen(alpha=(delta / 13.0, delta / 13.0), lightness=(1.0, 1.0), method="kernel", p=1.0)
    a = -delta
    centre = (1.0 - a) + a * 5.0 / 13.0  # centre weight of the blended 2-D kernel
    centre_1d = math.sqrt(centre)
    side = (1.0 / centre_1d - 1.0) / 2.0  # 1-D Gaussian side weight relative to the centre
    sigma = math.sqrt(-1.0 / (2.0 * math.log(side)))
    return A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(sigma, sigma), p=1.0)


def strengths(level: float) -> dict[str, float]:
    """Each op's strength at ``level`` in [0, 1] (the table in the module docstring): the one source of the
    magnitudes that the albumentations ops here and the batched ops of :mod:`noisystudent.batch_noise` use.

    ``rotate`` and ``shear`` in degrees, ``translate`` a fraction of the side, ``enhance`` the factor's
    distance from 1, ``bits`` kept by Posterize (8: none dropped), ``threshold`` of Solarize (>= 256: none)."""
    return {"rotate": _MAX_ROTATE_DEG * level, "enhance": _MAX_ENHANCE * level, "bits": 8 - int(round(4 * level)),
            "threshold": 256.0 * (1.0 - level), "shear": math.degrees(math.atan(_MAX_SHEAR * level)),
            "translate": _MAX_TRANSLATE * level}


def _ops(level: float, in_chans: int) -> dict[str, A.BaseCompose | A.BasicTransform]:
    """The op table at ``level`` in [0, 1]; the name order is the paper's."""
    st = strengths(level)
    enhance, bits, threshold = st["enhance"], int(st["bits"]), st["threshold"]
    shear_deg, translate = st["shear"], st["translate"]
    ops: dict[str, A.BaseCompose | A.BasicTransform] = {
        "Identity": A.NoOp(p=1.0),
        "AutoContrast": A.AutoContrast(method="pil", p=1.0),
        "Equalize": A.Equalize(mode="cv", by_channels=True, p=1.0),
        "Rotate": _signed(lambda v: _affine(rotate=(v, v)), st["rotate"]),
        "Solarize": (
            A.Solarize(threshold_range=(threshold / 255.0,) * 2, p=1.0) if threshold <= 255.0 else A.NoOp(p=1.0)
        ),
        "Color": _signed(lambda v: _jitter(saturation=1.0 + v), enhance),
        "Posterize": A.Posterize(num_bits=(bits, bits), p=1.0) if bits < 8 else A.NoOp(p=1.0),
        "Contrast": _signed(lambda v: _jitter(contrast=1.0 + v), enhance),
        "Brightness": _signed(lambda v: _jitter(brightness=1.0 + v), enhance),
        "Sharpness": _signed(_sharpness, enhance),
        "ShearX": _signed(lambda v: _affine(shear={"x": (v, v), "y": (0.0, 0.0)}), shear_deg),
        "ShearY": _signed(lambda v: _affine(shear={"x": (0.0, 0.0), "y": (v, v)}), shear_deg),
        "TranslateX": _signed(lambda v: _affine(translate_percent={"x": (v, v), "y": (0.0, 0.0)}), translate),
        "TranslateY": _signed(lambda v: _affine(translate_percent={"x": (0.0, 0.0), "y": (v, v)}), translate),
    }
    if in_chans == 1:
        del ops["Color"]
    return ops


#: The op names of the paper, in its order (``Color`` is dropped for 1-channel images).
RANDAUGMENT_OPS: tuple[str, ...] = tuple(_ops(0.0, 3))


def randaugment_op(name: str, m: float, in_chans: int) -> A.BaseCompose | A.BasicTransform:
    """One op of the table at magnitude ``m`` (0-30), with its random sign: what RandAugment applies when it
    draws ``name`` (used to compare the albumentations and the batched backends op by op)."""
    return _ops(float(m) / MAX_MAGNITUDE, in_chans)[name]


def rand_augment(n: int, m: float, in_chans: int) -> A.BaseCompose:
    """RandAugment with ``n`` ops per image at magnitude ``m`` (0-30) for HWC uint8 images.

    Returns an albumentations transform to put inside an ``A.Compose`` (it draws from the enclosing
    Compose's random state). Raises ``ValueError`` for out-of-range arguments: config validation and
    :func:`parse_randaugment` are where user input is checked.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_OPS:
        raise ValueError(f"rand_augment: n must be an integer in [0, {MAX_OPS}], got {n!r}")
    if not 0.0 <= float(m) <= MAX_MAGNITUDE:
        raise ValueError(f"rand_augment: m must be in [0, {MAX_MAGNITUDE:g}], got {m!r}")
    if in_chans not in (1, 3):
        raise ValueError(f"rand_augment: in_chans must be 1 or 3, got {in_chans!r}")
    ops = list(_ops(float(m) / MAX_MAGNITUDE, in_chans).values())
    # RandomOrder (unlike SomeOf) keeps the drawn order; replace=True samples like the paper's code.
    return A.RandomOrder(ops, n=n, replace=True, p=1.0)


_PART = re.compile(r"^([mn])(\d+(?:\.\d*)?|\.\d+)$")


def parse_randaugment(spec: str) -> tuple[int, float]:
    """``"rand-m9-n2"`` -> ``(2, 9.0)``: ``(n, m)``. Grammar in the module docstring.

    Raises :class:`UserError` naming ``spec`` for anything else (unknown or repeated part, an ``n``
    that is not an integer, a value out of range).
    """
    from .config import NoiseConfig  # defaults for missing parts

    def bad(why: str) -> UserError:
        return UserError(f"bad RandAugment spec {spec!r}: {why} (expected 'rand-m<M>-n<N>', e.g. 'rand-m9-n2')")

    if not isinstance(spec, str):
        raise bad("not a string")
    parts = spec.strip().split("-")
    if parts[0] != "rand":
        raise bad("must start with 'rand'")
    defaults = NoiseConfig()
    values: dict[str, str] = {}
    for part in parts[1:]:
        match = _PART.match(part)
        if match is None:
            raise bad(f"unknown part {part!r}")
        key, value = match.groups()
        if key in values:
            raise bad(f"'{key}' given twice")
        values[key] = value
    n_text = values.get("n")
    if n_text is not None and not n_text.isdigit():
        raise bad(f"n must be an integer, got {n_text!r}")
    n = int(n_text) if n_text is not None else defaults.randaugment_n
    m = float(values["m"]) if "m" in values else float(defaults.randaugment_m)
    if not 0 <= n <= MAX_OPS:
        raise bad(f"n must be in [0, {MAX_OPS}], got {n}")
    if not 0.0 <= m <= MAX_MAGNITUDE:
        raise bad(f"m must be in [0, {MAX_MAGNITUDE:g}], got {m:g}")
    return n, m
