"""torchvision's ImageNet families (ResNet, EfficientNet, ConvNeXt) with this project's model face.

Always built with ``weights=None``: nothing is downloaded, runs start from scratch as in the paper (a
teacher is trained on the labeled set). Each network is split into ``features`` (everything up to the
last feature map) and a :class:`ClassifierHead` that reuses torchvision's own classifier layers, so
``forward`` computes exactly what torchvision's model would, plus our dropout where torchvision has none.

Noise uses torchvision's own options where they exist: EfficientNet ``dropout`` / ``stochastic_depth_prob``,
ConvNeXt ``stochastic_depth_prob`` (dropout before its linear layer is ours). torchvision's ResNet has no
stochastic depth, so its blocks are subclassed to put a :class:`torchvision.ops.StochasticDepth` on the
residual branch; parameter names stay torchvision's (``layer1.0.conv1.weight`` under ``features``).
A first conv for ``in_chans != 3`` is derived from the 3-channel one (:func:`adapt_input_conv`).

Stage features (``feature_info`` / ``forward_intermediates``), timm's taps for these families (timm also
lists ResNet's stride-2 stem, left out here):

- ResNet: ``layer1`` ... ``layer4``, reductions 4/8/16/32 (64/128/256/512 channels, x4 for ResNet-50).
- EfficientNet: the last block group at each resolution, ``features.1/2/3/5/7``, reductions
  2/4/8/16/32 (B0: 16/24/40/112/320 channels). The last stage is the 320-channel block output, before
  the 1x1 head conv that makes the 1280-channel ``forward_features`` map: like WRN's, a block-group
  output, not the head's widening projection.
- ConvNeXt: its four stages ``features.1/3/5/7``, reductions 4/8/16/32 (T: 96/192/384/768 channels);
  the last is the ``forward_features`` map.

``forward_intermediates`` is a direct pass over the children of ``features`` (an ``nn.Sequential``)
that keeps the stage outputs: the same modules ``forward`` runs, no graph rewriting and no hooks, so it
costs nothing extra and runs under autocast like ``forward``. Its outputs are checked in the tests
against torchvision's maintained extractor, ``torchvision.models.feature_extraction`` (which traces an
FX graph per model: right as a reference, heavier than needed in a training step).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Union

import torchvision.models as tvm
import torchvision.models.resnet as tvr
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from noisystudent.models._registry import register_model
from noisystudent.models.layers import (
    Classifier,
    ClassifierHead,
    adapt_input_conv,
    drop_path_rates,
    make_feature_info,
)

__all__ = ["TorchvisionNet"]


class TorchvisionNet(Classifier):
    """A torchvision classifier as ``features`` + ``head``; ``forward_features`` returns the last feature map.

    ``stages`` are ``(num_chs, reduction, child)`` for the children of ``features`` whose outputs are the
    stage features (``child`` is the child's name in ``features``).
    """

    def __init__(self, features: nn.Sequential, head: ClassifierHead, stages: list[tuple[int, int, str]]):
        super().__init__()
        self.features = features
        self.head = head
        self.num_features = head.num_features
        self._feature_info = make_feature_info([(chs, red, f"features.{child}") for chs, red, child in stages])

    def _feature_path(self) -> list[tuple[str, nn.Module]]:
        """The children of ``features`` in order: ``forward_features`` is ``features(x)``."""
        return [(f"features.{name}", child) for name, child in self.features.named_children()]


class _BasicBlock(tvr.BasicBlock):
    """torchvision's BasicBlock with drop path on the residual branch (``drop_path`` is set by the builder)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_path: nn.Module = StochasticDepth(0.0, mode="row")

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + identity)


class _Bottleneck(tvr.Bottleneck):
    """torchvision's Bottleneck with drop path on the residual branch (``drop_path`` is set by the builder)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_path: nn.Module = StochasticDepth(0.0, mode="row")

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + identity)


def _create_resnet(
    block: type[Union[_BasicBlock, _Bottleneck]],
    layers: list[int],
    num_classes: int,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs,
) -> TorchvisionNet:
    net = tvr.ResNet(block, layers, num_classes=num_classes, **kwargs)
    blocks = [m for m in net.modules() if isinstance(m, (_BasicBlock, _Bottleneck))]
    for blk, rate in zip(blocks, drop_path_rates(len(blocks), drop_path_rate)):
        blk.drop_path = StochasticDepth(rate, mode="row")
    features = nn.Sequential(
        OrderedDict(
            conv1=adapt_input_conv(net.conv1, in_chans),
            bn1=net.bn1,
            relu=net.relu,
            maxpool=net.maxpool,
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
            layer4=net.layer4,
        )
    )
    stages = [(64 * 2**i * block.expansion, 4 * 2**i, f"layer{i + 1}") for i in range(4)]
    return TorchvisionNet(features, ClassifierHead(net.fc.in_features, num_classes, drop_rate, fc=net.fc), stages)


def _create_efficientnet(
    constructor: Callable[..., tvm.EfficientNet],
    num_classes: int,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs,
) -> TorchvisionNet:
    net = constructor(
        weights=None, num_classes=num_classes, dropout=drop_rate, stochastic_depth_prob=drop_path_rate, **kwargs
    )
    net.features[0][0] = adapt_input_conv(net.features[0][0], in_chans)
    drop, fc = net.classifier
    # features: stem (/2), seven block groups with strides 1,2,2,2,1,2,1 (every EfficientNet-B*), 1x1 head conv
    stages = [
        (net.features[i][-1].out_channels, reduction, str(i))
        for i, reduction in ((1, 2), (2, 4), (3, 8), (5, 16), (7, 32))
    ]
    return TorchvisionNet(net.features, ClassifierHead(fc.in_features, num_classes, drop=drop, fc=fc), stages)


def _create_convnext(
    constructor: Callable[..., tvm.ConvNeXt],
    num_classes: int,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs,
) -> TorchvisionNet:
    net = constructor(weights=None, num_classes=num_classes, stochastic_depth_prob=drop_path_rate, **kwargs)
    net.features[0][0] = adapt_input_conv(net.features[0][0], in_chans)
    norm, _flatten, fc = net.classifier
    # features: stem (/4), then four stages of CNBlocks with a downsampling layer (/2) between each two
    stages = [
        (net.features[i][-1].layer_scale.shape[0], reduction, str(i))
        for i, reduction in ((1, 4), (3, 8), (5, 16), (7, 32))
    ]
    head = ClassifierHead(fc.in_features, num_classes, drop_rate, norm=norm, fc=fc)
    return TorchvisionNet(net.features, head, stages)


@register_model
def resnet18(**kwargs) -> TorchvisionNet:
    """torchvision ResNet-18 (ImageNet layout: 7x7 stem and max pool, 32x downsampling), ~11M parameters."""
    return _create_resnet(_BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model
def resnet34(**kwargs) -> TorchvisionNet:
    """torchvision ResNet-34, ~21M parameters."""
    return _create_resnet(_BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model
def resnet50(**kwargs) -> TorchvisionNet:
    """torchvision ResNet-50 (bottleneck blocks), ~24M parameters."""
    return _create_resnet(_Bottleneck, [3, 4, 6, 3], **kwargs)


@register_model
def efficientnet_b0(**kwargs) -> TorchvisionNet:
    """torchvision EfficientNet-B0 (the Noisy Student paper's family), ~4M parameters."""
    return _create_efficientnet(tvm.efficientnet_b0, **kwargs)


@register_model
def efficientnet_b1(**kwargs) -> TorchvisionNet:
    """torchvision EfficientNet-B1, ~6.5M parameters."""
    return _create_efficientnet(tvm.efficientnet_b1, **kwargs)


@register_model
def efficientnet_b2(**kwargs) -> TorchvisionNet:
    """torchvision EfficientNet-B2, ~7.7M parameters."""
    return _create_efficientnet(tvm.efficientnet_b2, **kwargs)


@register_model
def convnext_tiny(**kwargs) -> TorchvisionNet:
    """torchvision ConvNeXt-T, ~28M parameters."""
    return _create_convnext(tvm.convnext_tiny, **kwargs)


@register_model
def convnext_small(**kwargs) -> TorchvisionNet:
    """torchvision ConvNeXt-S, ~49M parameters."""
    return _create_convnext(tvm.convnext_small, **kwargs)
