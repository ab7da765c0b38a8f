"""Multi-branch CIFAR ResNets / WRNs of ONE (Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native
Ensemble", NeurIPS 2018): one shared trunk, ``m`` branches, a gate, and the gated ensemble as the output.

``one{m}_{base}`` (``one3_resnet8``, ``one3_wrn_16_2``) is ``base`` with its last stage (for a WRN also the
final BN-ReLU) and its classifier repeated ``m`` times on top of the shared earlier stages. The gate is
the official code's (github.com/Lan1991Xu/ONE_NeurIPS2018, ``models/cifar/resnet.py``): the trunk output,
globally average-pooled, then linear -> BatchNorm1d -> ReLU -> softmax over the ``m`` branches; the model
returns sum_i g_i * logits_i.

The layout is chosen so that a ONE student's checkpoints are plain state dicts: ``base`` is an ordinary
``base`` model whose last stage and head are branch 0 (the single-branch student the ``one`` method
trains and exports by default), ``branches.{i}`` the other ``m - 1`` (:class:`Branch`) and ``gate`` the
gate; the ``one`` distillation method holds exactly ``branches`` and ``gate`` under those names, so the
ensemble's state dict is the student's under ``base.`` plus the method's.

The model face (:class:`~noisystudent.models.layers.Classifier`): ``forward_features`` is the shared trunk
output (the map every branch and the gate read), ``forward_head`` the gated ensemble of the branches on
it (``pre_logits``: the branches' pooled features, concatenated), ``feature_info`` the base model's
stages, the last of them taken from branch 0.
"""

from __future__ import annotations

import functools
import re

import torch
from torch import Tensor, nn

from noisystudent.errors import UserError
from noisystudent.models._registry import EntryPoint, register_family
from noisystudent.models.cifar_resnet import CifarResNet
from noisystudent.models.layers import Classifier, feature_take_indices
from noisystudent.models.wide_resnet import WideResNet

__all__ = ["Branch", "Gate", "OneNet", "is_one_base", "one_parts", "split_trunk"]

BASE_TYPES = (CifarResNet, WideResNet)


class Branch(nn.Module):
    """One branch: the base model's last stage, its final norm/activation (WRN; identity for a ResNet), its head."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.stage = model.stages[-1]
        self.norm = model.norm if isinstance(model, WideResNet) else nn.Identity()
        self.act = model.act if isinstance(model, WideResNet) else nn.Identity()
        self.head = model.head

    def forward_features(self, trunk: Tensor) -> Tensor:
        return self.act(self.norm(self.stage(trunk)))

    def forward(self, trunk: Tensor) -> Tensor:
        return self.head(self.forward_features(trunk))


class Gate(nn.Module):
    """Pooled trunk features -> linear -> BatchNorm1d -> ReLU -> softmax: one weight per branch and image."""

    def __init__(self, in_chs: int, branches: int):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(in_chs, branches)
        self.bn = nn.BatchNorm1d(branches)

    def forward(self, trunk: Tensor) -> Tensor:
        return torch.softmax(torch.relu(self.bn(self.fc(self.pool(trunk)))), dim=1)


def is_one_base(model: nn.Module) -> bool:
    return isinstance(model, BASE_TYPES)


def split_trunk(model: Classifier) -> list[tuple[str, nn.Module]]:
    """The shared trunk of ``model``: its feature path up to (not including) its last stage."""
    last = model.feature_info[-1]["module"]
    path = model._feature_path()
    return path[: [name for name, _ in path].index(last)]


def _build_base(base: str, **kwargs) -> Classifier:
    from noisystudent.models._factory import create_model

    model = create_model(base, **kwargs)
    if not is_one_base(model):
        raise UserError(f"ONE needs a CIFAR ResNet or Wide ResNet base (resnet8 ... resnet26, wrn_D_K), got {base!r}")
    return model


def one_parts(base: str, num_classes: int, branches: int, in_chans: int = 3, drop_rate: float = 0.0,
              drop_path_rate: float = 0.0) -> tuple[nn.ModuleList, Gate]:
    """The ``branches - 1`` extra branches (each freshly initialised by the base model's own init, with
    its drop path and dropout) and the gate, for a ``base`` trunk: what the ``one`` method trains."""
    extra = nn.ModuleList(Branch(_build_base(base, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                                             drop_path_rate=drop_path_rate)) for _ in range(branches - 1))
    with torch.device("meta"):  # the trunk's channels, without building weights
        trunk_chs = _build_base(base, num_classes=1, in_chans=in_chans).feature_info[-2]["num_chs"]
    return extra, Gate(trunk_chs, branches)


class OneNet(Classifier):
    """``branches`` copies of ``base``'s last stage and head on its shared trunk, mixed by a gate."""

    def __init__(self, base: str, branches: int, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        if branches < 2:
            raise UserError(f"ONE needs at least 2 branches, got {branches}")
        kw = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
        self.base = _build_base(base, **kw)
        self.branches, self.gate = one_parts(base, branches=branches, **kw)
        self.num_features = self.base.num_features * branches
        self._feature_info = [{**s, "module": f"base.{s['module']}"} for s in self.base.feature_info]

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def all_branches(self) -> list[nn.Module]:
        return [Branch(self.base)] + list(self.branches)

    def _feature_path(self) -> list[tuple[str, nn.Module]]:
        return [(f"base.{name}", module) for name, module in split_trunk(self.base)]

    def branch_logits(self, trunk: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every branch's logits on a trunk map, branch 0 first, and the gate's (N, m) weights."""
        return [b(trunk) for b in self.all_branches()], self.gate(trunk)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if pre_logits:
            return torch.cat([b.head(b.forward_features(x), pre_logits=True) for b in self.all_branches()], dim=1)
        logits, gate = self.branch_logits(x)
        return ensemble(logits, gate)

    def forward_intermediates(self, x: Tensor, indices=None) -> tuple[Tensor, list[Tensor]]:
        take = feature_take_indices(len(self._feature_info), indices)
        wanted = {self._feature_info[i]["module"]: i for i in take}
        outputs: dict[int, Tensor] = {}
        for name, module in self._feature_path():
            x = module(x)
            if name in wanted:
                outputs[wanted[name]] = x
        last = len(self._feature_info) - 1
        branch0 = Branch(self.base)
        stage = branch0.stage(x)
        outputs[last] = stage
        logits = [branch0.head(branch0.act(branch0.norm(stage)))] + [b(x) for b in self.branches]
        return ensemble(logits, self.gate(x)), [outputs[i] for i in take]

    def reset_classifier(self, num_classes: int) -> None:
        for b in self.all_branches():
            b.head.reset(num_classes)


def ensemble(logits: list[Tensor], gate: Tensor) -> Tensor:
    """sum_i gate[:, i] * logits[i]: the gated ensemble of the branches' logits."""
    return sum(gate[:, i : i + 1].to(z.dtype) * z for i, z in enumerate(logits))


_ONE_NAME = re.compile(r"one([1-9]\d*)_(\w+)")


def _is_cifar_base(name: str) -> bool:
    from noisystudent.models._registry import model_entrypoint

    if model_entrypoint(name) is None:
        return False
    with torch.device("meta"):
        return is_one_base(model_entrypoint(name)(num_classes=1))


@register_family("oneM_BASE (ONE's gated ensemble of M >= 2 branches on a CIFAR ResNet / WRN base, e.g. one3_resnet8)")
def _resolve_one(name: str) -> EntryPoint | None:
    match = _ONE_NAME.fullmatch(name)
    if match is None or int(match[1]) < 2 or not _is_cifar_base(match[2]):
        return None
    return functools.partial(OneNet, match[2], int(match[1]))
