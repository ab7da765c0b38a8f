"""The data-spec grammar (``evaluate --data``): Fashion-MNIST splits and roots, manifests, folders."""

from __future__ import annotations

import pytest

from noisystudent.data.fashion_mnist import DEFAULT_ROOT
from noisystudent.data.spec import DataSpec, open_data_spec, parse_data_spec
from noisystudent.errors import UserError


@pytest.mark.parametrize("spec, want", [
    ("fashion-mnist", DataSpec("fashion_mnist", DEFAULT_ROOT, "test")),
    ("fashion-mnist:test", DataSpec("fashion_mnist", DEFAULT_ROOT, "test")),
    ("fashion-mnist:train", DataSpec("fashion_mnist", DEFAULT_ROOT, "train")),
    ("fashion-mnist:train:/data/fm", DataSpec("fashion_mnist", "/data/fm", "train")),
    ("fashion-mnist:/data/fm", DataSpec("fashion_mnist", "/data/fm", "test")),
    ("fashion-mnist:./fm", DataSpec("fashion_mnist", "./fm", "test")),
    ("labels.csv", DataSpec("manifest", "labels.csv")),
    ("sets/test.PARQUET", DataSpec("manifest", "sets/test.PARQUET")),
    ("images/test", DataSpec("folder", "images/test")),
])
def test_parse(spec, want):
    assert parse_data_spec(spec) == want


@pytest.mark.parametrize("spec", ["fashion-mnist:val", "fashion-mnist:Train", "fashion-mnist:validation:/tmp"])
def test_unknown_split_names_the_flag_and_the_splits(spec):
    with pytest.raises(UserError, match=r"^--val: Fashion-MNIST has no split .*fashion-mnist:train"):
        parse_data_spec(spec, "--val")


def test_open_a_folder(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / cls / "x.png")
    src = open_data_spec(str(tmp_path), in_chans=1)
    assert src.classes == ["a", "b"] and len(src) == 2
    assert len(open_data_spec(str(tmp_path), in_chans=1, labeled=False)) == 2
    with pytest.raises(UserError, match="data path not found"):
        open_data_spec(str(tmp_path / "nope"), in_chans=1)
