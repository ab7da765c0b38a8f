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
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Union

import torchvision.models as tvm
import torchvision.models.resnet as tvr
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from noisystudent.models._registry import register_model
from noisystudent.models.layers import Classifier, ClassifierHead, adapt_input_conv, drop_path_rates

__all__ = ["TorchvisionNet"]


class TorchvisionNet(Classifier):
    """A torchvision classifier as ``features`` + ``head``; ``forward_features`` returns the last feature map."""

    def __init__(self, features: nn.Module, head: ClassifierHead):
        super().__init__()
        self.features = features
        self.head = head
        self.num_features = head.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


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
    return TorchvisionNet(features, ClassifierHead(net.fc.in_features, num_classes, drop_rate, fc=net.fc))


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
    return TorchvisionNet(net.features, ClassifierHead(fc.in_features, num_classes, drop=drop, fc=fc))


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
    return TorchvisionNet(net.features, ClassifierHead(fc.in_features, num_classes, drop_rate, norm=norm, fc=fc))


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
