"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016) for small images.

Pre-activation basic blocks (BN-ReLU-conv3x3, twice), n = (d-4)/6 blocks in each of three stages with
16k/32k/64k channels (strides 1/2/2), a 16-channel 3x3 stem and a final BN-ReLU. Where the shape changes
the shortcut is a 1x1 conv on the pre-activated input, as in the paper's code. The paper's dropout
between the two convs is not used: Noisy Student's model noise is drop path on every residual branch
(:class:`torchvision.ops.StochasticDepth`, rate rising linearly over the blocks) plus dropout before the
classifier. Any ``wrn_D_K`` name with (D-4) % 6 == 0 builds, registered or not.

Stage features (``feature_info`` / ``forward_intermediates``): the outputs of the three block groups,
16k/32k/64k channels at reductions 1/2/4 (``stages.0`` ... ``stages.2``), so the last stage is taken
*before* the final BN-ReLU and differs from ``forward_features`` (which is after it). That is what the
distillation papers' own WRN code taps: Zagoruyko & Komodakis' attention-transfer code gives its loss
the group outputs and applies the final BN-ReLU only on the way to the classifier, and RepDistiller's
AT/FitNet/FSP read the same group outputs. A method that wants the post-BN-ReLU map has it from
``forward_features``, and its pooled form from ``forward_head(..., pre_logits=True)``.
"""

from __future__ import annotations

import functools
import re

from torch import Tensor, nn

from noisystudent.errors import UserError
from noisystudent.models._registry import EntryPoint, register_family, register_model
from noisystudent.models.layers import Classifier, ClassifierHead, block_drop_paths, drop_path_layer, make_feature_info

__all__ = ["PreActBlock", "WideResNet", "wrn_16_2", "wrn_16_4", "wrn_28_2", "wrn_28_10", "wrn_40_2"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 on the branch, drop path on it, added to the shortcut (no final ReLU)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = drop_path_layer(drop_path)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # not in place: ``x`` itself is the identity shortcut
        pre = nn.functional.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return shortcut + self.drop_path(out)


class WideResNet(Classifier):
    """WRN-depth-widen_factor; ``forward_features`` returns the (N, 64k, H/4, W/4) map after the last BN-ReLU.

    Its stages are the block-group outputs, the last one before that BN-ReLU (see the module docstring).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise UserError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise UserError(f"Wide ResNet widen factor must be >= 1, got {widen_factor}")
        blocks_per_stage = (depth - 4) // 6
        rates = iter(block_drop_paths(3 * blocks_per_stage, drop_path_rate))
        self.depth = depth
        self.widen_factor = widen_factor
        self.stem = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        stages = []
        in_planes = 16
        for i, base in enumerate((16, 32, 64)):
            planes = base * widen_factor
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(PreActBlock(in_planes, planes, stride, drop_path=next(rates)))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_planes)
        self.act = nn.ReLU(inplace=True)
        self.num_features = in_planes
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self._feature_info = make_feature_info(
            [(base * widen_factor, 2**i, f"stages.{i}") for i, base in enumerate((16, 32, 64))]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _feature_path(self) -> list[tuple[str, nn.Module]]:
        """stem, the three stages, the final BN-ReLU: ``forward_features`` is ``act(norm(stages(stem(x))))``."""
        stages = [(f"stages.{i}", stage) for i, stage in enumerate(self.stages)]
        return [("stem", self.stem), *stages, ("norm", self.norm), ("act", self.act)]


def _create_wrn(depth: int, widen_factor: int, **kwargs) -> WideResNet:
    return WideResNet(depth=depth, widen_factor=widen_factor, **kwargs)


@register_model
def wrn_16_2(**kwargs) -> WideResNet:
    """WRN-16-2, ~0.7M parameters."""
    return _create_wrn(16, 2, **kwargs)


@register_model
def wrn_16_4(**kwargs) -> WideResNet:
    """WRN-16-4, ~2.7M parameters."""
    return _create_wrn(16, 4, **kwargs)


@register_model
def wrn_28_2(**kwargs) -> WideResNet:
    """WRN-28-2, ~1.5M parameters; the usual semi-supervised CIFAR baseline (FixMatch, MixMatch)."""
    return _create_wrn(28, 2, **kwargs)


@register_model
def wrn_28_10(**kwargs) -> WideResNet:
    """WRN-28-10, ~36M parameters; too big for CPU training, there for GPU runs."""
    return _create_wrn(28, 10, **kwargs)


@register_model
def wrn_40_2(**kwargs) -> WideResNet:
    """WRN-40-2, ~2.2M parameters."""
    return _create_wrn(40, 2, **kwargs)


_WRN_NAME = re.compile(r"wrn_([1-9]\d*)_([1-9]\d*)")


@register_family("wrn_D_K (Wide ResNet of depth D = 6n+4 >= 10 and widen factor K >= 1, e.g. wrn_22_8)")
def _resolve_wrn(name: str) -> EntryPoint | None:
    """Entry point for any well-formed ``wrn_D_K`` name; None for other names and impossible depths."""
    match = _WRN_NAME.fullmatch(name)
    if match is None:
        return None
    depth, widen_factor = int(match[1]), int(match[2])
    if depth < 10 or (depth - 4) % 6 or widen_factor < 1:
        return None
    return functools.partial(_create_wrn, depth, widen_factor)
