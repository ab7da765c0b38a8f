"""A trained STPM detector: anomaly maps and scores from a frozen teacher and its student.

Per stage l the map is the paper's per-location loss e^l (:func:`~noisystudent.distill.methods.stpm.stpm_stage_maps`,
one home for the formula, shared with training), upsampled bilinearly to the input size; the stage maps
combine into one map by their product (the paper) or their sum, and the image's score is the map's
maximum. The threshold (:func:`choose_threshold`) is the score that at most a target share of validation
normals exceed; an image scoring above it is flagged.

Maps are stored in Parquet as bytes (:func:`encode_map`): float32, byte-shuffled, zlib. Not float16: a
product of three stage maps of ~1e-3 is ~1e-9, which float16 flushes to zero, and the ranking of the
small values is what a pixel ROC curve reads.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..distill.methods.stpm import stpm_stage_maps

MAP_ENCODING = "float32-byteshuffle-zlib"


def combine_maps(stage_maps: Sequence[torch.Tensor], size: tuple[int, int], combine: str = "product") -> torch.Tensor:
    """``(N, h_l, w_l)`` stage maps -> one ``(N, H, W)`` map: each upsampled bilinearly to ``size``, then
    multiplied (``product``) or added (``sum``)."""
    out = None
    for m in stage_maps:
        up = F.interpolate(m.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        if out is None:
            out = up
        elif combine == "product":
            out = out * up
        elif combine == "sum":
            out = out + up
        else:
            raise ValueError(f"combine must be product or sum, got {combine!r}")
    return out


def choose_threshold(scores: np.ndarray, fpr: float) -> float:
    """The smallest score ``t`` among ``scores`` such that at most ``fpr`` of them exceed it (flag: score > t).

    With n scores that is the ``ceil((1 - fpr) * n)``-th smallest; ``fpr`` 0 gives the maximum."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no validation scores to set a threshold on")
    k = min(max(math.ceil((1.0 - fpr) * s.size) - 1, 0), s.size - 1)
    return float(s[k])


def encode_map(m: np.ndarray) -> bytes:
    """One map as compressed bytes: float32, bytes grouped by significance (exponents compress), zlib."""
    a = np.ascontiguousarray(m, dtype="<f4")
    shuffled = a.view(np.uint8).reshape(-1, 4).T.copy()
    return zlib.compress(shuffled.tobytes(), 6)


def decode_map(blob: bytes, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`encode_map`: a float32 array of ``shape``."""
    raw = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    return raw.reshape(4, -1).T.copy().view("<f4").reshape(tuple(shape))


class Detector:
    """Teacher and student of one architecture, the stages matched, how maps combine; in eval mode.

    ``maps(x)`` takes a batch as the eval transform of the teacher's spec makes it. On a CUDA device the
    models run in fp16 (the maps are computed in float32 from the normalised features)."""

    def __init__(self, teacher: Checkpoint, student: Checkpoint, stages: Sequence[int], combine: str = "product",
                 threshold: Optional[float] = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.half = self.device.type == "cuda"
        self.stages = [int(s) for s in stages]
        self.combine = combine
        self.threshold = threshold
        self.spec = teacher.spec
        self.teacher = teacher.build_model(self.device)
        self.student = student.build_model(self.device)
        if self.half:
            self.teacher, self.student = self.teacher.half(), self.student.half()

    def transform(self):
        from ..transforms import create_transform

        s = self.spec
        return create_transform(s.image_size, s.in_chans, list(s.mean), list(s.std), noise=None)

    @torch.inference_mode()
    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.half:
            x = x.half()
        _, t = self.teacher.forward_intermediates(x, indices=self.stages)
        _, s = self.student.forward_intermediates(x, indices=self.stages)
        return stpm_stage_maps(s, t)

    @torch.inference_mode()
    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` inputs -> ``(N, H, W)`` float32 anomaly maps at the input size."""
        return combine_maps(self.stage_maps(x), tuple(x.shape[-2:]), self.combine)

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), maps (N, H, W))`` as float32 numpy arrays; a score is its map's maximum."""
        m = self.maps(x)
        return m.flatten(1).amax(1).cpu().numpy(), m.cpu().numpy()


def score_source(detector: Detector, source: Any, batch_size: int = 128, with_maps: bool = False,
                 progress: bool = False) -> dict[str, Any]:
    """Score every readable image of ``source`` in this process (small sets: validation normals, tests).

    Returns ``{"index": positions in source, "image_id", "score", "maps" (or None)}``; unreadable images
    are left out (the Ray job lists them; here the caller compares ``index`` with ``len(source)``)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..data.torch_dataset import SourceDataset, collate_skip_none

    ds = SourceDataset(source, detector.transform())
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_skip_none)
    idx, scores, maps = [], [], []
    for batch in tqdm(loader, desc="scoring", disable=not progress, leave=False):
        if batch is None:
            continue
        x, _, i = batch
        s, m = detector.score(x)
        idx.append(i.numpy())
        scores.append(s)
        if with_maps:
            maps.append(m)
    index = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    return {
        "index": index,
        "image_id": [source.image_id(int(i)) for i in index],
        "score": np.concatenate(scores) if scores else np.zeros(0, np.float32),
        "maps": (np.concatenate(maps) if maps else None) if with_maps else None,
    }
