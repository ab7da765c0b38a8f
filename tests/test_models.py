"""The model factory: every registered model builds, runs, has the common face and honours its noise options."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from noisystudent.errors import UserError
from noisystudent.models import (
    create_model,
    feature_take_indices,
    is_model,
    list_models,
    model_num_params,
    stage_info,
    to_memory_format,
)
from noisystudent.models.layers import drop_path_rates
from noisystudent.models.torchvision_models import TorchvisionNet

# image models; the 1-D signal CNNs (cross-modal students) have their own tests in test_signal_cnn.py
SIGNAL = [n for n in list_models() if n.startswith("signal_cnn")]
ALL = [n for n in list_models() if n not in SIGNAL]
CIFAR_RESNETS = ["resnet8", "resnet14", "resnet20", "resnet26", "resnet32", "resnet44", "resnet56", "resnet110"]
SMALL = CIFAR_RESNETS + ["wrn_16_2", "wrn_16_4", "wrn_28_2", "wrn_28_10", "wrn_40_2"]
IMAGENET = [
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "convnext_tiny",
    "convnext_small",
]
NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@functools.lru_cache(maxsize=None)
def _built(name: str, in_chans: int) -> nn.Module:
    return create_model(name, NUM_CLASSES, in_chans=in_chans)


def _plain(name: str, in_chans: int = 3) -> nn.Module:
    """A fresh copy of the default (noise-free) model. Built once per name and channels in this module:
    initialising the weights is most of a big model's cost here (2 s for convnext_small on a busy core)."""
    return copy.deepcopy(_built(name, in_chans))


@pytest.fixture(scope="module", autouse=True)
def _forget_built_models():
    yield
    _built.cache_clear()


def _input(name: str, batch: int = 2, in_chans: int = 3, small_size: int | None = None) -> torch.Tensor:
    """Small models see Fashion-MNIST/CIFAR sizes (or ``small_size`` to save time); torchvision ones
    (32x downsampling) their smallest, 32x32."""
    if name in SMALL:
        size = small_size or (28 if in_chans == 1 else 32)
    else:
        size = 32
    return torch.randn(batch, in_chans, size, size)


def _noise_only_train(model: nn.Module) -> nn.Module:
    """Everything in eval (BatchNorm uses running stats, so it adds no batch dependence) except the noise.

    Then any difference between two forwards can only come from dropout or stochastic depth.
    """
    model.eval()
    for m in model.modules():
        if isinstance(m, (StochasticDepth, nn.Dropout)):
            m.train()
    return model


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """assert_close relative to the tensors' scale.

    Untrained networks in eval mode can have tiny outputs (EfficientNet's are ~1e-14 with fresh BatchNorm
    statistics), where a fixed absolute tolerance would make every comparison pass.
    """
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact inequality: a dropped sample or unit changes the output exactly, whatever its scale."""
    return not torch.equal(a, b)


def test_registry_lists_every_family() -> None:
    assert ALL == sorted(ALL) and SIGNAL == ["signal_cnn_m", "signal_cnn_s"]
    assert sorted(SMALL + IMAGENET) == ALL
    assert all(is_model(name) for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_forward_shape(name: str) -> None:
    for in_chans in (1, 3):
        model = _plain(name, in_chans).eval()
        with torch.no_grad():
            out = model(_input(name, in_chans=in_chans))
        assert out.shape == (2, NUM_CLASSES)
        assert torch.isfinite(out).all()
        assert model.num_classes == NUM_CLASSES


@pytest.mark.parametrize("name", ALL)
def test_features_and_head_compose_to_forward(name: str) -> None:
    model = _plain(name).eval()
    x = _input(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
        assert isinstance(model.num_features, int)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        # pre-logits = global average pool (then LayerNorm for ConvNeXt; Identity elsewhere)
        expected = model.head.norm(feats.mean(dim=(2, 3), keepdim=True)).flatten(1)
        _assert_close(pooled, expected)
        _assert_close(model.forward_head(feats), model(x))


@pytest.mark.parametrize("name", ALL)
def test_drop_path_adds_noise_only_when_asked(name: str) -> None:
    x = _input(name, batch=8, small_size=16)
    noisy = _noise_only_train(create_model(name, NUM_CLASSES, drop_path_rate=0.5))
    rates = [m.p for m in noisy.modules() if isinstance(m, StochasticDepth)]
    assert rates and max(rates) > 0
    with torch.no_grad():
        assert _differ(noisy(x), noisy(x)), "drop path 0.5 in train mode changed nothing"
        noisy.eval()  # the teacher labels clean: no noise at evaluation
        _assert_close(noisy(x), noisy(x))

    clean = _noise_only_train(create_model(name, NUM_CLASSES, drop_rate=0.0, drop_path_rate=0.0))
    assert all(m.p == 0 for m in clean.modules() if isinstance(m, StochasticDepth))
    with torch.no_grad():
        _assert_close(clean(x), clean(x))


@pytest.mark.parametrize("name", ALL)
def test_dropout_before_classifier(name: str) -> None:
    x = _input(name, batch=4, small_size=16)
    model = create_model(name, NUM_CLASSES, drop_rate=0.5, drop_path_rate=0.0)
    assert model.head.drop.p == 0.5
    _noise_only_train(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        _assert_close(feats, model.forward_features(x))  # no noise before the head
        assert _differ(model.forward_head(feats), model.forward_head(feats))


@pytest.mark.parametrize("name", SMALL + ["resnet18", "resnet50"])
def test_our_drop_path_rises_linearly_over_every_block(name: str) -> None:
    model = create_model(name, NUM_CLASSES, drop_path_rate=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    blocks = [m for m in model.modules() if hasattr(m, "drop_path")]
    assert len(rates) == len(blocks) > 1
    assert rates == pytest.approx(drop_path_rates(len(rates), 0.3))
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)


def test_none_options_are_dropped_and_defaults_are_noise_free() -> None:
    for name in ("resnet8", "wrn_16_2", "efficientnet_b0", "convnext_tiny"):
        model = create_model(name, NUM_CLASSES, drop_rate=None, drop_path_rate=None)
        assert model.head.drop.p == 0
        assert all(m.p == 0 for m in model.modules() if isinstance(m, StochasticDepth))


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier_changes_output_width(name: str) -> None:
    model = _plain(name).eval()
    model.reset_classifier(3)
    assert model.num_classes == 3
    with torch.no_grad():
        assert model(_input(name)).shape == (2, 3)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UserError) as err:
        create_model("resnet9000", NUM_CLASSES)
    message = str(err.value)
    assert "resnet9000" in message
    for name in ALL:
        assert name in message
    assert "wrn_D_K" in message


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 0}, {"in_chans": 0}, {"drop_rate": 1.0}, {"drop_path_rate": -0.1}]
)
def test_out_of_range_arguments_are_user_errors(kwargs: dict) -> None:
    args = {"num_classes": NUM_CLASSES, **kwargs}
    field = next(iter(kwargs))
    with pytest.raises(UserError, match=field):
        create_model("resnet8", **args)


def test_any_wrn_depth_width_parses() -> None:
    assert is_model("wrn_10_3") and not is_model("wrn_10_3_x")
    model = create_model("wrn_10_3", NUM_CLASSES, in_chans=1).eval()
    assert model.depth == 10 and model.num_features == 64 * 3
    with torch.no_grad():
        assert model(_input("wrn_16_2", in_chans=1)).shape == (2, NUM_CLASSES)
    for bad in ("wrn_11_2", "wrn_4_2", "wrn_16_0", "wrn_016_2"):
        assert not is_model(bad)
        with pytest.raises(UserError, match="unknown model"):
            create_model(bad, NUM_CLASSES)


def test_params_grow_along_the_ladders() -> None:
    def params(name: str) -> int:
        return model_num_params(create_model(name, NUM_CLASSES))

    depths = [params(name) for name in CIFAR_RESNETS]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)
    assert params("wrn_16_2") < params("wrn_28_2") < params("wrn_40_2")
    assert params("wrn_16_2") < params("wrn_16_4")


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "resnet18"])
def test_gradients_reach_the_first_layer(name: str) -> None:
    """One training step's worth: the loss flows from the classifier back to the (adapted) first conv."""
    model = create_model(name, NUM_CLASSES, in_chans=1, drop_rate=0.2, drop_path_rate=0.2).train()
    loss = nn.functional.cross_entropy(model(_input(name, batch=4, in_chans=1)), torch.arange(4))
    loss.backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_torchvision_models_match_torchvision_layout() -> None:
    """The wrapper reuses torchvision's layers: same parameter count as torchvision's own model."""
    import torchvision.models as tvm

    for name in ("resnet50", "efficientnet_b0", "convnext_tiny"):
        ours = create_model(name, NUM_CLASSES)
        assert isinstance(ours, TorchvisionNet)
        theirs = getattr(tvm, name)(weights=None, num_classes=NUM_CLASSES)
        assert model_num_params(ours) == model_num_params(theirs)


# --- stage features: feature_info / forward_intermediates / stage_info ---------------------------------------

# every registered name, plus family names the registry cannot list (a family slipped through once)
# image models: the signal CNNs reduce along the length only (their face is tested in test_signal_cnn.py)
FEATURE_MODELS = [n for n in ALL if not n.startswith("signal_cnn")] + ["wrn_22_8", "wrn_10_2"]


def _stage_input(name: str, batch: int = 2, scale: int = 1) -> torch.Tensor:
    """Small models at CIFAR size; torchvision ones at 64x64 so their 32x-reduced stage is still 2x2
    (each side divided by ``scale`` where the spatial layout does not matter, to save time)."""
    size = (64 if name in IMAGENET else 32) // scale
    return torch.randn(batch, 3, size, size)


def _feature_map_height(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return model.forward_features(x).shape[2]


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_feature_info_describes_the_stage_outputs(name: str) -> None:
    model = _plain(name).eval()
    info = model.feature_info
    x = _stage_input(name)
    with torch.no_grad():
        logits, stages = model.forward_intermediates(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)  # the same ops: bit for bit
    assert len(stages) == len(info) >= 3
    modules = dict(model.named_modules())
    for i, (stage, feat) in enumerate(zip(info, stages)):
        assert set(stage) == {"num_chs", "reduction", "module", "index"} and stage["index"] == i
        assert stage["module"] in modules
        assert feat.shape == (2, stage["num_chs"], x.shape[2] // stage["reduction"], x.shape[3] // stage["reduction"])
    reductions = [stage["reduction"] for stage in info]
    assert reductions == sorted(reductions)
    assert reductions[-1] == x.shape[2] // _feature_map_height(model, x)  # the last stage is at the final resolution
    # stage_info (meta device) says the same without real weights, and adds the spatial size
    described = stage_info(name, in_chans=3, image_size=x.shape[2])
    assert [{k: v for k, v in s.items() if k != "size"} for s in described] == info
    assert [s["size"] for s in described] == [tuple(f.shape[2:]) for f in stages]
    # feature_info is a copy: a caller cannot change the model's
    model.feature_info[0]["num_chs"] = -1
    assert model.feature_info[0]["num_chs"] == info[0]["num_chs"]


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_stage_outputs_equal_torchvision_feature_extractor(name: str) -> None:
    """torchvision's maintained extractor (FX graph, node = module name) is the reference for our direct pass."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _plain(name, in_chans=1).eval()
    info = model.feature_info
    extractor = create_feature_extractor(model, return_nodes={stage["module"]: str(stage["index"]) for stage in info})
    x = _stage_input(name)[:, :1]
    with torch.no_grad():
        expected = extractor(x)
        _, stages = model.forward_intermediates(x)
    assert len(expected) == len(stages)
    for stage, feat in zip(info, stages):
        torch.testing.assert_close(feat, expected[str(stage["index"])], rtol=0, atol=0)


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_forward_intermediates_logits_keep_forward_noise(name: str) -> None:
    """In training mode the logits are forward's, random draws included (dropout, drop path in the same order)."""
    model = create_model(name, NUM_CLASSES, drop_rate=0.3, drop_path_rate=0.3).train()
    x = _stage_input(name, scale=2)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(x)
        torch.manual_seed(1)
        logits, _ = model.forward_intermediates(x, indices=[0])
        torch.manual_seed(2)
        other, _ = model.forward_intermediates(x, indices=[0])
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert _differ(logits, other), "noise is on but two seeds gave the same logits"


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_gradients_flow_to_stage_outputs(name: str) -> None:
    """A loss on the stage outputs (a feature-distillation loss) trains the layers below them, with no
    in-place op breaking autograd, next to the classification loss of the same pass."""
    model = create_model(name, NUM_CLASSES, drop_rate=0.1, drop_path_rate=0.1).train()
    logits, stages = model.forward_intermediates(_stage_input(name, scale=2))
    for feat in stages:
        assert feat.requires_grad
        feat.retain_grad()
    feature_loss = sum(feat.pow(2).mean() for feat in stages)
    (nn.functional.cross_entropy(logits, torch.arange(2)) + feature_loss).backward()
    for i, feat in enumerate(stages):
        assert feat.grad is not None and feat.grad.abs().sum() > 0, f"stage {i} got no gradient"
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0

    # the shallowest stage alone is wired to the input side of the network
    model.zero_grad()
    _, (first,) = model.forward_intermediates(_stage_input(name, scale=2), indices=[0])
    first.pow(2).mean().backward()
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_indices_choose_stages_in_the_order_asked() -> None:
    model = create_model("resnet8", NUM_CLASSES, in_chans=1).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        for indices, expected in ((None, [0, 1, 2]), (2, [1, 2]), ([-1, 0], [2, 0]), ([1, 1], [1, 1]), ([], [])):
            _, stages = model.forward_intermediates(x, indices)
            assert len(stages) == len(expected)
            for feat, i in zip(stages, expected):
                torch.testing.assert_close(feat, every[i], rtol=0, atol=0)
        for bad in (4, 0, -1, [3], [-4], [True], [0.5]):
            with pytest.raises(IndexError):
                model.forward_intermediates(x, bad)
    assert feature_take_indices(5, [-1, 0]) == [4, 0] and feature_take_indices(5, 2) == [3, 4]


def test_wrn_last_stage_is_before_the_final_bn_relu() -> None:
    """The documented choice: WRN stages are block-group outputs (AT/RepDistiller), forward_features follows
    them with BN-ReLU; for CIFAR ResNets, torchvision ResNets and ConvNeXt the last stage is the feature map."""
    x = torch.randn(2, 3, 32, 32)
    wrn = create_model("wrn_16_2", NUM_CLASSES).eval()
    with torch.no_grad():
        _, (last,) = wrn.forward_intermediates(x, indices=[-1])
        torch.testing.assert_close(wrn.forward_features(x), wrn.act(wrn.norm(last)), rtol=0, atol=0)
        assert (last < 0).any()  # un-rectified
    for name in ("resnet8", "resnet18", "convnext_tiny"):
        model = create_model(name, NUM_CLASSES).eval()
        x = _stage_input(name)
        with torch.no_grad():
            _, (last,) = model.forward_intermediates(x, indices=[-1])
            torch.testing.assert_close(last, model.forward_features(x), rtol=0, atol=0)


def test_stage_info_validates_configs() -> None:
    """What config validation needs: sizes per stage at the data's resolution, and a stage that does not
    exist (or an image too small) is a UserError naming the model."""
    cifar = stage_info("resnet20", in_chans=1, image_size=28)
    assert [s["size"] for s in cifar] == [(28, 28), (14, 14), (7, 7)]
    assert [s["num_chs"] for s in cifar] == [16, 32, 64]
    assert [s["size"] for s in stage_info("resnet18", image_size=(64, 32))] == [(16, 8), (8, 4), (4, 2), (2, 1)]
    assert [s["index"] for s in stage_info("wrn_22_8", indices=[-1, 0])] == [2, 0]
    with pytest.raises(UserError, match="'resnet8' has 3 stages"):
        stage_info("resnet8", indices=[3])
    with pytest.raises(UserError, match="unknown model"):
        stage_info("resnet9000")
    with pytest.raises(UserError, match="'convnext_tiny' cannot take 2x2 images"):
        stage_info("convnext_tiny", image_size=2)
    with pytest.raises(UserError, match="image size"):
        stage_info("resnet8", image_size=0)



@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2"])
def test_channels_last_changes_the_layout_not_the_numbers(name: str, tmp_path) -> None:
    """``to_memory_format`` puts the 4-D weights in NHWC; forward and the saved checkpoint stay the NCHW ones."""
    from noisystudent.checkpoint import ModelSpec, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    plain = create_model(name, num_classes=10, in_chans=3).eval()
    fast = to_memory_format(copy.deepcopy(plain), True)
    convs = [p for p in fast.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # 3x3 kernels do change layout (1x1 ones are both)
    assert all(p.is_contiguous() for p in fast.parameters() if p.dim() != 4)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
    assert to_memory_format(plain, False) is plain and all(p.is_contiguous() for p in plain.parameters())
    spec = ModelSpec(name=name, num_classes=10, in_chans=3, image_size=32, mean=[0.5] * 3, std=[0.5] * 3,
                     classes=[str(c) for c in range(10)])
    # the same weights get the same id and an NCHW file whatever their layout in memory
    assert save_checkpoint(tmp_path / "a.pt", fast, spec) == save_checkpoint(tmp_path / "b.pt", plain, spec)
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert all(t.is_contiguous() for t in ckpt.state_dict.values())
    back = ckpt.build_model(channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in back.parameters() if p.dim() == 4)


# -- what building a model imports ------------------------------------------------------------------


def test_torchvision_families_are_registered_by_name_and_imported_on_first_build() -> None:
    """`TORCHVISION_MODELS` is exactly what torchvision_models registers; its stand-ins build the real model."""
    import noisystudent.models as models
    import noisystudent.models.torchvision_models as tv
    from noisystudent.models import _registry

    registered = {n for n, fn in _registry._model_entrypoints.items() if fn.__module__ == tv.__name__}
    assert registered == set(models.TORCHVISION_MODELS)
    assert isinstance(create_model("resnet18", NUM_CLASSES, in_chans=1), TorchvisionNet)


def test_a_model_without_drop_path_needs_no_torchvision_and_loads_a_noised_checkpoint() -> None:
    """A labeling actor builds its teacher with drop path off: nn.Identity there, and neither torchvision nor
    albumentations imported (about 2 s of a fresh process); the weights of a model trained with drop path load
    into it unchanged (strict), since StochasticDepth holds no state."""
    import subprocess
    import sys

    code = ("import sys; from noisystudent.models import create_model; from noisystudent.feed import EvalInput; "
            "m = create_model('resnet14', 10, in_chans=1, drop_path_rate=0.0); EvalInput(28, 1, [0.5], [0.5]); "
            "create_model('wrn_16_2', 10, in_chans=1); "
            "print(sorted(k for k in ('torchvision', 'albumentations', 'torch._dynamo') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    for name in ("resnet14", "wrn_16_2"):
        noised = create_model(name, NUM_CLASSES, in_chans=1, drop_path_rate=0.2)
        assert any(isinstance(m, StochasticDepth) and m.p > 0 for m in noised.modules())
        clean = create_model(name, NUM_CLASSES, in_chans=1, drop_path_rate=0.0)
        assert not any(isinstance(m, StochasticDepth) for m in clean.modules())
        clean.load_state_dict(noised.state_dict(), strict=True)
        x = torch.randn(2, 1, 28, 28)
        noised.eval(), clean.eval()
        with torch.no_grad():
            torch.testing.assert_close(clean(x), noised(x))
