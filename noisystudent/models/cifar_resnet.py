"""CIFAR-style ResNets (He et al. 2016, section 4.2) for small images (28x28, 32x32).

Depth 6n+2: a 3x3 stem, three stages of n basic blocks with 16/32/64 channels (strides 1/2/2), global
pooling and a linear classifier. They are the CPU-scale ladder of this project (resnet8 -> resnet26), so
a student can be the same size as its teacher or larger; resnet32/44/56/110 are the deeper ones of the
ResNet paper's CIFAR table (and the usual teachers of the CIFAR distillation literature). Projection shortcuts (1x1 conv + BN, "option B")
are used where the shape changes. Every residual branch ends in a
:class:`torchvision.ops.StochasticDepth` (drop path), its rate rising linearly over the blocks (``nn.Identity``
when the model has no drop path: :func:`~noisystudent.models.layers.drop_path_layer`).

Stage features (``feature_info`` / ``forward_intermediates``): the outputs of the three block groups,
16/32/64 channels at reductions 1/2/4 (``stages.0`` ... ``stages.2``), after each group's last ReLU; the
last one is the ``forward_features`` map. They are the block-group outputs that AT's and RepDistiller's
CIFAR ResNets give FitNet/AT/FSP.
"""

from __future__ import annotations

from torch import Tensor, nn

from noisystudent.errors import UserError
from noisystudent.models._registry import register_model
from noisystudent.models.layers import Classifier, ClassifierHead, block_drop_paths, drop_path_layer, make_feature_info

__all__ = ["BasicBlock", "CifarResNet", "resnet8", "resnet14", "resnet20", "resnet26", "resnet32", "resnet44", "resnet56",
           "resnet110"]

STAGE_WIDTHS = (16, 32, 64)
STAGE_REDUCTIONS = (1, 2, 4)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN on the branch, drop path on it, then add the shortcut and ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = drop_path_layer(drop_path)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class CifarResNet(Classifier):
    """ResNet-(6n+2) for small images; ``forward_features`` returns the (N, 64, H/4, W/4) map."""

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UserError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        rates = iter(block_drop_paths(3 * blocks_per_stage, drop_path_rate))
        self.depth = depth
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, STAGE_WIDTHS[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(STAGE_WIDTHS[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_planes = STAGE_WIDTHS[0]
        for i, planes in enumerate(STAGE_WIDTHS):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, drop_path=next(rates)))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_planes
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self._feature_info = make_feature_info(
            [(w, r, f"stages.{i}") for i, (w, r) in enumerate(zip(STAGE_WIDTHS, STAGE_REDUCTIONS))]
        )
        _init_weights(self)

    def _feature_path(self) -> list[tuple[str, nn.Module]]:
        """stem, then the three stages: ``forward_features`` is ``stages(stem(x))``."""
        return [("stem", self.stem)] + [(f"stages.{i}", stage) for i, stage in enumerate(self.stages)]


def _init_weights(model: nn.Module) -> None:
    """He (fan_out) init for convs, unit BN, as in torchvision's ResNet; linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _create_cifar_resnet(depth: int, **kwargs) -> CifarResNet:
    return CifarResNet(depth=depth, **kwargs)


@register_model
def resnet8(**kwargs) -> CifarResNet:
    """ResNet-8: one block per stage, ~78k parameters; the smallest teacher."""
    return _create_cifar_resnet(8, **kwargs)


@register_model
def resnet14(**kwargs) -> CifarResNet:
    """ResNet-14: two blocks per stage, ~0.17M parameters."""
    return _create_cifar_resnet(14, **kwargs)


@register_model
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 of the ResNet paper's CIFAR table, ~0.27M parameters."""
    return _create_cifar_resnet(20, **kwargs)


@register_model
def resnet26(**kwargs) -> CifarResNet:
    """ResNet-26: four blocks per stage, ~0.37M parameters."""
    return _create_cifar_resnet(26, **kwargs)


@register_model
def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32: five blocks per stage, ~0.46M parameters."""
    return _create_cifar_resnet(32, **kwargs)


@register_model
def resnet44(**kwargs) -> CifarResNet:
    """ResNet-44: seven blocks per stage, ~0.66M parameters."""
    return _create_cifar_resnet(44, **kwargs)


@register_model
def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56: nine blocks per stage, ~0.85M parameters; the usual CIFAR teacher of the KD literature."""
    return _create_cifar_resnet(56, **kwargs)


@register_model
def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110: eighteen blocks per stage, ~1.7M parameters."""
    return _create_cifar_resnet(110, **kwargs)
