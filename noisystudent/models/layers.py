"""Small building blocks shared by every model: the classifier head, the common model face, the drop-path schedule.

Drop path is the per-sample form of stochastic depth (Huang et al. 2016): in training, each sample's
residual branch is dropped with probability ``p`` and kept ones are scaled by ``1 / (1 - p)``; the
shortcut always passes. timm calls it "drop path" because whole paths through the network vanish for a
sample. We use torchvision's :class:`torchvision.ops.StochasticDepth` with ``mode="row"`` (per sample)
rather than writing our own, so the small models and torchvision's EfficientNet/ConvNeXt share one module
type, and tests or callers can find every drop-path site with ``isinstance(m, StochasticDepth)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Classifier", "ClassifierHead", "drop_path_rates", "adapt_input_conv"]


def drop_path_rates(num_blocks: int, drop_path_rate: float) -> list[float]:
    """Per-block drop-path probabilities rising linearly from 0 (first block) to ``drop_path_rate`` (last).

    Early blocks compute low-level features every later block depends on, so they are dropped least
    (the linear decay rule of the stochastic-depth paper, as in timm). One block gets ``drop_path_rate``.
    """
    if num_blocks <= 1:
        return [float(drop_path_rate)] * num_blocks
    return [drop_path_rate * i / (num_blocks - 1) for i in range(num_blocks)]


class ClassifierHead(nn.Module):
    """Global average pool -> optional norm -> flatten -> dropout -> linear.

    ``norm`` is for heads that normalise the pooled features (ConvNeXt's LayerNorm2d). Dropout sits right
    before the linear layer: that is the "dropout" of Noisy Student's model noise.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        drop_rate: float = 0.0,
        norm: nn.Module | None = None,
        fc: nn.Module | None = None,
        drop: nn.Module | None = None,
    ):
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = norm if norm is not None else nn.Identity()
        self.flatten = nn.Flatten(1)
        self.drop = drop if drop is not None else nn.Dropout(drop_rate)
        self.fc = fc if fc is not None else nn.Linear(num_features, num_classes)

    def reset(self, num_classes: int) -> None:
        """Replace the linear layer with a freshly initialised one of ``num_classes`` outputs."""
        old = next(self.fc.parameters())
        self.fc = nn.Linear(self.num_features, num_classes, device=old.device, dtype=old.dtype)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.norm(self.pool(x)))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class Classifier(nn.Module):
    """The face every model has, so training, distillation and labeling code never care which model it is.

    Subclasses set ``self.head`` (a :class:`ClassifierHead`) and ``self.num_features`` and implement
    :meth:`forward_features`, which returns the unpooled feature map ``(N, num_features, H, W)``.
    ``forward(x) == forward_head(forward_features(x))`` always holds.
    """

    head: ClassifierHead
    num_features: int

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify a feature map; with ``pre_logits`` return the pooled features."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """New linear classifier with ``num_classes`` outputs (e.g. a teacher reused on another label set)."""
        self.head.reset(num_classes)


@torch.no_grad()
def adapt_input_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_chans`` input channels instead of 3.

    The weights are derived from the 3-channel ones (summed for one channel, tiled and rescaled for more,
    as timm does) so the layer keeps the architecture's own initialisation scale, and any 3-channel
    weights loaded later into the original layer would carry over the same way.
    """
    if conv.in_channels == in_chans:
        return conv
    weight = conv.weight
    if in_chans == 1:
        new_weight = weight.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_chans / weight.shape[1])
        new_weight = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    new.weight.copy_(new_weight)
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    return new
