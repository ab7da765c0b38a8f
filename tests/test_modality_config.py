"""Per-modality input settings (data.modalities) and the signal modality's transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noisystudent import validate
from noisystudent.config import DataConfig, NoiseConfig
from noisystudent.errors import ConfigError
from noisystudent.transforms import create_transform


def _data(modalities, **over):
    return validate.build(DataConfig, {"kind": "paired", "labeled": "l.csv", "test": "t.csv",
                                       "modalities": modalities, **over}, "data")


@pytest.mark.parametrize("modalities,field", [
    ({"rgb": {"channels": 2}}, "data.modalities.rgb.channels"),
    ({"rgb": {"channels": 3, "mean": [0.5]}}, "data.modalities.rgb.mean"),
    ({"sig": {"kind": "signal", "channels": 4, "noise": {"randaugment_n": 2}}}, "data.modalities.sig.noise.randaugment_n"),
    ({"sig": {"kind": "sound"}}, "data.modalities.sig.kind"),
    ({"rgb": {"colour": 1}}, "data.modalities.rgb.colour"),
    ({}, "data.modalities"),
])
def test_bad_modality_settings_name_the_field(modalities, field):
    with pytest.raises(ConfigError, match=rf"^config field '{field}'"):
        _data(modalities)


def test_modalities_round_trip_through_the_frozen_config():
    import dataclasses

    d = _data({"rgb": {"channels": 3}, "sig": {"kind": "signal", "channels": 2, "noise": {"randaugment_n": 0}}})
    assert d.modalities["sig"].noise == NoiseConfig(randaugment_n=0) and d.modalities["rgb"].stats == ([0.5] * 3, [0.5] * 3)
    again = validate.build(DataConfig, dataclasses.asdict(d), "data")  # what config.yaml holds, read back
    assert again.modalities == d.modalities


def test_signal_transform_normalises_per_channel_and_noises_the_time_axis():
    sig = np.zeros((1, 10, 2), np.uint8)
    sig[0, :, 0] = np.arange(10) * 20
    sig[0, :, 1] = 255
    clean = create_transform([1, 10], 2, [0.0, 0.5], [1.0, 0.5])
    x = clean(sig)
    assert x.shape == (2, 1, 10) and torch.allclose(x[1], torch.ones(1, 10))
    torch.testing.assert_close(x[0, 0], torch.arange(10) * 20 / 255.0)
    torch.manual_seed(0)
    noisy = create_transform([1, 10], 2, [0.0, 0.5], [1.0, 0.5], NoiseConfig(randaugment_n=0, hflip=True, crop_padding=2))
    outs = [noisy(sig)[0, 0] for _ in range(20)]
    assert any(not torch.equal(o, x[0, 0]) for o in outs)  # shifted or reversed, never another shape
    assert all(o.shape == (10,) for o in outs)
