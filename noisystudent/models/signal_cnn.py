"""1-D residual convolutional networks over a multi-channel signal: the students of non-image modalities.

A signal modality (:mod:`noisystudent.modality`) reaches a model as ``(N, channels, 1, length)``. Every
convolution here has a ``(1, k)`` kernel and a ``(1, s)`` stride, so it is a 1-D convolution along the
length (no weight ever spans two rows); it is written as ``Conv2d`` so the stage outputs keep the
``(N, C, 1, L)`` shape every feature-distillation loss and :class:`~noisystudent.models.layers.ClassifierHead`
take, and the model has the project's one face (``feature_info``, ``forward_intermediates``): methods and
the engine need no special case for it. ``reduction`` in ``feature_info`` is the stride along the length.

Stages: three block groups of widths 32, 64, 128 (strides 1, 2, 2) after a kernel-7 stem; drop path on
each residual branch (rate rising over the blocks, as in :mod:`.cifar_resnet`). ``signal_cnn_s`` has one
block a stage (~0.1M parameters), ``signal_cnn_m`` two.
"""

from __future__ import annotations

from torch import Tensor, nn

from noisystudent.models._registry import register_model
from noisystudent.models.layers import Classifier, ClassifierHead, block_drop_paths, drop_path_layer, make_feature_info

__all__ = ["SignalCNN", "signal_cnn_s", "signal_cnn_m"]

STAGE_WIDTHS = (32, 64, 128)
STAGE_STRIDES = (1, 2, 2)


def conv1d(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    """A 1-D convolution along the last axis of an ``(N, C, 1, L)`` tensor."""
    return nn.Conv2d(cin, cout, (1, k), stride=(1, stride), padding=(0, k // 2), bias=False)


class Block1d(nn.Module):
    """conv(k=5)-BN-ReLU-conv(k=5)-BN on the branch, drop path on it, then the shortcut and ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, drop_path: float | None):
        super().__init__()
        self.branch = nn.Sequential(conv1d(cin, cout, 5, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                    conv1d(cout, cout, 5), nn.BatchNorm2d(cout))
        self.drop_path = drop_path_layer(drop_path)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv1d(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.drop_path(self.branch(x)) + self.shortcut(x))


class SignalCNN(Classifier):
    """A residual 1-D CNN; ``forward_features`` returns the ``(N, 128, 1, L/4)`` map."""

    def __init__(self, blocks: int, num_classes: int, in_chans: int = 1, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        rates = iter(block_drop_paths(3 * blocks, drop_path_rate))
        self.stem = nn.Sequential(conv1d(in_chans, STAGE_WIDTHS[0], 7), nn.BatchNorm2d(STAGE_WIDTHS[0]),
                                  nn.ReLU(inplace=True))
        stages, cin = [], STAGE_WIDTHS[0]
        for width, stride in zip(STAGE_WIDTHS, STAGE_STRIDES):
            group = []
            for j in range(blocks):
                group.append(Block1d(cin, width, stride if j == 0 else 1, next(rates)))
                cin = width
            stages.append(nn.Sequential(*group))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.head = ClassifierHead(cin, num_classes, drop_rate)
        reductions = [1, 2, 4]
        self._feature_info = make_feature_info([(w, r, f"stages.{i}")
                                                for i, (w, r) in enumerate(zip(STAGE_WIDTHS, reductions))])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _feature_path(self) -> list[tuple[str, nn.Module]]:
        return [("stem", self.stem)] + [(f"stages.{i}", s) for i, s in enumerate(self.stages)]


@register_model
def signal_cnn_s(**kwargs) -> SignalCNN:
    """1-D CNN, one residual block a stage: the small student of a signal modality."""
    return SignalCNN(1, **kwargs)


@register_model
def signal_cnn_m(**kwargs) -> SignalCNN:
    """1-D CNN, two residual blocks a stage."""
    return SignalCNN(2, **kwargs)
