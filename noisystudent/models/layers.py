"""Small building blocks shared by every model: the classifier head, the common model face, the drop-path schedule.

The common face (:class:`Classifier`) includes timm's *stage features*: ``feature_info`` says what each
stage gives (channels, reduction, module) and ``forward_intermediates`` returns the logits and the chosen
stage outputs from one pass. Feature and relational distillation (FitNet, AT, FSP, STPM, ...) read stages
through this face, the same way for every model, without forward hooks.

Drop path is the per-sample form of stochastic depth (Huang et al. 2016): in training, each sample's
residual branch is dropped with probability ``p`` and kept ones are scaled by ``1 / (1 - p)``; the
shortcut always passes. timm calls it "drop path" because whole paths through the network vanish for a
sample. We use torchvision's :class:`torchvision.ops.StochasticDepth` with ``mode="row"`` (per sample)
rather than writing our own, so the small models and torchvision's EfficientNet/ConvNeXt share one module
type, and tests or callers can find every drop-path site with ``isinstance(m, StochasticDepth)``. A model
built without drop path (``drop_path_rate`` 0, as every teacher is for labeling) gets ``nn.Identity`` there
instead and never imports torchvision (:func:`drop_path_layer`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "Classifier",
    "ClassifierHead",
    "adapt_input_conv",
    "block_drop_paths",
    "drop_path_layer",
    "drop_path_rates",
    "feature_take_indices",
    "make_feature_info",
]

StageIndices = int | Sequence[int] | None


def drop_path_layer(rate: float | None) -> nn.Module:
    """The drop-path layer of one residual branch: torchvision's ``StochasticDepth(rate, mode="row")``, or
    ``nn.Identity`` when the model has no drop path at all (``rate`` None).

    Why not always StochasticDepth: importing torchvision costs a fresh process 1.5-3.5 s on a 2-core CPU (its
    ``ops`` import ``torch._dynamo``), and every labeling actor is such a process, building its teacher with
    drop path off (inference). A layer that does nothing there should not cost each actor that import, which
    was about a third of a labeling job's fixed cost (docs/accelerator.md). StochasticDepth holds no
    parameters or buffers, so a checkpoint loads into either form."""
    if rate is None:
        return nn.Identity()
    from torchvision.ops import StochasticDepth

    return StochasticDepth(float(rate), mode="row")


def block_drop_paths(num_blocks: int, drop_path_rate: float) -> list[float | None]:
    """What each block's :func:`drop_path_layer` gets: :func:`drop_path_rates` when the model has drop path,
    else None for every block (no drop path anywhere: ``nn.Identity``, no torchvision import)."""
    return drop_path_rates(num_blocks, drop_path_rate) if drop_path_rate > 0 else [None] * num_blocks


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


def make_feature_info(stages: Sequence[tuple[int, int, str]]) -> list[dict[str, Any]]:
    """timm-style ``feature_info`` from ``(num_chs, reduction, module)`` triples, numbered in order."""
    return [
        {"num_chs": int(chs), "reduction": int(red), "module": module, "index": i}
        for i, (chs, red, module) in enumerate(stages)
    ]


def feature_take_indices(num_stages: int, indices: StageIndices = None) -> list[int]:
    """The stage indices ``indices`` asks for, as non-negative ints in the order asked (timm's rule).

    None means every stage; an int ``n`` the last ``n`` stages; a sequence picks stages by index, negative
    ones counting from the end (``-1`` is the last stage). Out-of-range indices raise IndexError: a config
    naming stages should be checked first against :func:`noisystudent.models.stage_info`, which can say
    which model lacks the stage.
    """
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_stages:
            raise IndexError(f"asked for the last {indices} stages of a model with {num_stages}")
        return list(range(num_stages - indices, num_stages))
    taken = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_stages <= index < num_stages:
            raise IndexError(f"stage index {index!r} out of range for a model with {num_stages} stages")
        taken.append(index % num_stages)
    return taken


class Classifier(nn.Module):
    """The face every model has, so training, distillation and labeling code never care which model it is.

    Subclasses set ``self.head`` (a :class:`ClassifierHead`), ``self.num_features`` and
    ``self._feature_info`` (:func:`make_feature_info`), and implement :meth:`_feature_path`: the modules
    that, applied in order, compute the unpooled feature map ``(N, num_features, H, W)``. Both
    :meth:`forward_features` and :meth:`forward_intermediates` walk that one path, so the stage outputs are
    the very tensors the classifier's forward computes, and ``forward(x) == forward_head(forward_features(x))``
    always holds.
    """

    head: ClassifierHead
    num_features: int
    _feature_info: list[dict[str, Any]]

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One dict per stage, shallowest first: ``num_chs`` (channels of the stage output), ``reduction``
        (input size / output size, the stride vs the input), ``module`` (dotted name of the module whose
        output the stage is: ``model.get_submodule(module)``, and the node name for
        ``torchvision.models.feature_extraction``) and ``index`` (its position here, the index
        :meth:`forward_intermediates` takes). A fresh copy: changing it does not change the model."""
        return [dict(info) for info in self._feature_info]

    def _feature_path(self) -> list[tuple[str, nn.Module]]:
        """``(dotted name, module)`` pairs whose composition is :meth:`forward_features`; each stage's
        ``module`` in ``feature_info`` is one of the names."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self._feature_path():
            x = module(x)
        return x

    def forward_intermediates(
        self, x: torch.Tensor, indices: StageIndices = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits, stage outputs)`` from one forward pass; what a feature-distillation loss needs.

        ``indices`` chooses the stages (:func:`feature_take_indices`: None = all, an int = the last n, a
        sequence = those indices, negatives from the end); the outputs come back in the order asked.
        ``logits`` is exactly ``forward(x)``, noise included: the same modules run in the same order, so
        in training mode dropout and drop path draw the same random numbers as :meth:`forward` would.
        The stage outputs are part of the autograd graph (a loss on them trains the layers below them).
        A plain loop over the model's own modules, not forward hooks: nothing stays registered on the
        model, and every parameter that ``forward`` uses is used. Under DDP, call it through the wrapper's
        ``forward`` (e.g. a module whose ``forward`` is this method, wrapped in DDP): DDP only arms its
        gradient all-reduce for passes that go through ``DistributedDataParallel.forward``, so
        ``ddp.module.forward_intermediates(x)`` would train each worker on its own gradients.
        """
        take = feature_take_indices(len(self._feature_info), indices)
        wanted = {self._feature_info[i]["module"]: i for i in take}
        outputs: dict[int, torch.Tensor] = {}
        for name, module in self._feature_path():
            x = module(x)
            if name in wanted:
                outputs[wanted[name]] = x
        return self.forward_head(x), [outputs[i] for i in take]

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
