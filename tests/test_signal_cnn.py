"""The 1-D CNN of signal modalities has the project's model face: feature_info, forward_intermediates."""

from __future__ import annotations

import pytest
import torch

from noisystudent.models import create_model, stage_info

NAMES = ["signal_cnn_s", "signal_cnn_m"]


@pytest.mark.parametrize("name", NAMES)
def test_stage_outputs_are_described_by_feature_info(name):
    torch.manual_seed(0)
    model = create_model(name, 10, in_chans=2).eval()
    x = torch.randn(3, 2, 1, 28)  # (N, channels, 1, length): a 2 x 28 signal
    with torch.no_grad():
        logits, stages = model.forward_intermediates(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    assert logits.shape == (3, 10)
    for info, feat in zip(model.feature_info, stages):
        assert feat.shape == (3, info["num_chs"], 1, -(-28 // info["reduction"]))
    described = stage_info(name, in_chans=2, image_size=(1, 28))
    assert [s["size"] for s in described] == [tuple(f.shape[2:]) for f in stages]


def test_convolutions_never_mix_rows():
    """A (1, k) kernel: two signals stacked as rows of one input give each its own row of features."""
    torch.manual_seed(0)
    model = create_model("signal_cnn_s", 10, in_chans=2).eval()
    a, b = torch.randn(1, 2, 1, 28), torch.randn(1, 2, 1, 28)
    with torch.no_grad():
        both = model.forward_features(torch.cat([a, b], dim=2))
        torch.testing.assert_close(both[:, :, :1], model.forward_features(a))
        torch.testing.assert_close(both[:, :, 1:], model.forward_features(b))


def test_drop_path_and_dropout_are_noise_only_in_training():
    model = create_model("signal_cnn_m", 10, in_chans=2, drop_rate=0.5, drop_path_rate=0.5)
    x = torch.randn(4, 2, 1, 28)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
