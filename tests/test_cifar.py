"""CIFAR-10/100 from python-pickle batches: the split, ids, channels, errors, the unsafe-pickle refusal, and
a teacher trained on them through the CLI. The batches are tiny synthetic ones the test writes in the
standard layout (a dict with ``data`` as (N, 3072) channel-first rows, ``labels`` / ``fine_labels``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from noisystudent.cli import main
from noisystudent.config import DataConfig
from noisystudent.data import create_data
from noisystudent.data.cifar import CifarSource, load_cifar
from noisystudent.errors import ConfigError, UserError

C10 = [f"c{k}" for k in range(10)]


def _batch(n: int, n_classes: int, seed: int, key: str) -> tuple[dict, np.ndarray]:
    """``n`` images whose class is visible (a class-dependent red level), as a CIFAR batch dict."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    hwc = rng.integers(0, 60, size=(n, 32, 32, 3), dtype=np.uint8)
    hwc[..., 0] = (labels * (255 // n_classes))[:, None, None].astype(np.uint8)
    rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)
    return {"batch_label": f"synthetic {seed}", "data": rows, key: labels.tolist()}, hwc


def _dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with five train batches, a test batch and ``batches.meta``."""
    where = root / "cifar-10-batches-py"
    where.mkdir(parents=True)
    train = []
    for i in range(1, 6):
        batch, hwc = _batch(per_batch, 10, seed=i, key="labels")
        _dump(batch, where / f"data_batch_{i}")
        train.append(hwc)
    batch, test_hwc = _batch(test, 10, seed=99, key="labels")
    _dump(batch, where / "test_batch")
    _dump({"label_names": C10, "num_cases_per_batch": per_batch}, where / "batches.meta")
    return {"train": np.concatenate(train), "test": test_hwc}


def write_cifar100(root: Path, n: int = 200) -> None:
    where = root / "cifar-100-python"
    where.mkdir(parents=True)
    for name, seed in (("train", 1), ("test", 2)):
        batch, _ = _batch(n, 100, seed=seed, key="fine_labels")
        batch["coarse_labels"] = [k // 5 for k in batch["fine_labels"]]
        _dump(batch, where / name)
    _dump({"fine_label_names": [f"f{k}" for k in range(100)], "coarse_label_names": [f"g{k}" for k in range(20)]},
          where / "meta")


@pytest.fixture(scope="module")
def c10(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root)


def test_cifar10_pixels_labels_and_classes_are_the_files(c10) -> None:
    root, pixels = c10
    images, labels, classes = load_cifar(root, "cifar10", "train")
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, pixels["train"])  # channel-first rows turned to HWC
    assert classes == C10 and labels.dtype == np.int64 and np.bincount(labels).tolist() == [10] * 10
    # the extracted folder itself works as data.root too
    same, _, _ = load_cifar(root / "cifar-10-batches-py", "cifar10", "test")
    np.testing.assert_array_equal(same, pixels["test"])


def test_cifar10_split_ids_limits_and_gray(c10) -> None:
    root, pixels = c10
    cfg = DataConfig(kind="cifar10", root=str(root), labels_per_class=4, val_fraction=0.25, val_min_per_class=1, test_limit=12,
                     unlabeled_limit=30, in_chans=3, image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    bundle = create_data(cfg)
    assert bundle.classes == C10
    assert len(bundle.labeled) == 30 and len(bundle.val) == 10  # 4 a class: 3 train + 1 val
    assert len(bundle.unlabeled) == 30 and bundle.unlabeled.labels is None
    assert bundle.unlabeled.hidden_labels is not None and len(bundle.test) == 12
    ids = set(bundle.labeled.image_ids()) | set(bundle.val.image_ids()) | set(bundle.unlabeled.image_ids())
    assert len(ids) == 70 and all(i.startswith("train-") for i in ids)
    k = int(bundle.labeled.image_id(0).split("-")[1])
    np.testing.assert_array_equal(bundle.labeled.load(0), pixels["train"][k])
    assert create_data(cfg).labeled.image_ids() == bundle.labeled.image_ids()  # seeded
    gray = CifarSource(root, "cifar10", "test", [0, 1], in_chans=1)
    assert gray.load(0).shape == (32, 32, 1) and gray.load_all().shape == (2, 32, 32, 1)
    assert pickle.loads(pickle.dumps(gray)).image_ids() == ["test-00000", "test-00001"]


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    cfg = DataConfig(kind="cifar100", root=str(tmp_path), labels_per_class=1, val_fraction=0.0, in_chans=3,
                     mean=[0.5] * 3, std=[0.25] * 3)
    bundle = create_data(cfg)
    assert len(bundle.classes) == 100 and bundle.classes[7] == "f7"
    assert len(bundle.labeled) == 100 and len(bundle.unlabeled) == 100 and len(bundle.test) == 200


def test_missing_folder_names_the_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_cifar(tmp_path, "cifar10", "train")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "test_batch" in msg and "batches.meta" in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(UserError, match="cifar-100-python"):
        load_cifar(tmp_path, "cifar100", "test")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_unread(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _Evil(marker)},
          tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(UserError, match="data_batch_3.*os.system|data_batch_3.*posix.system"):
        load_cifar(tmp_path, "cifar10", "train")
    assert not marker.exists()


def test_config_rules(tmp_path: Path) -> None:
    from noisystudent.config import check_data

    with pytest.raises(ConfigError, match="data.labels_per_class.*5000"):
        check_data(DataConfig(kind="cifar10", labels_per_class=None))
    with pytest.raises(ConfigError, match="data.val"):
        check_data(DataConfig(kind="cifar100", val="x.csv"))


def test_teacher_trains_on_cifar10_through_the_cli(c10, tmp_path: Path) -> None:
    root, _ = c10
    cfg = {"name": "c10", "data": {"kind": "cifar10", "root": str(root), "labels_per_class": 6, "val_fraction": 0.0,
                                   "image_size": 32, "in_chans": 3, "mean": [0.3] * 3, "std": [0.3] * 3},
           "teacher": {"name": "resnet8"}, "teacher_train": {"epochs": 1, "batch_size": 20, "warn_below_steps": 0},
           "student": {"generations": 1, "ladder": [{"name": "resnet8"}]}, "ray": {"workers": 0}}
    cfg_file = tmp_path / "c10.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["teacher", str(cfg_file), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "gen-0" / "teacher" / "model.pt").is_file()
    bad = dict(cfg, data=dict(cfg["data"], root=str(tmp_path / "nowhere")))
    cfg_file.write_text(yaml.safe_dump(bad))
    res = CliRunner().invoke(main, ["teacher", str(cfg_file), "--run-dir", str(tmp_path / "run2"), "--quiet"])
    assert res.exit_code == 2 and "cifar-10-batches-py" in res.output and len(res.output.strip().splitlines()) == 1
