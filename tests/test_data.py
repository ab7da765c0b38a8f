"""Data sources on real files: PNG/JPEG trees written with PIL, CSV/Parquet manifests, Fashion-MNIST."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from noisystudent.config import DataConfig
from noisystudent.data import (
    DataBundle,
    FashionMNISTSource,
    ImageFolderSource,
    ManifestSource,
    SkippedImagesWarning,
    UnlabeledFolderSource,
    create_data,
    load_fashion_mnist,
)
from noisystudent.data.torch_dataset import EMPTY_BATCH, SourceDataset, collate_skip_none
from noisystudent.errors import ConfigError, ImageDecodeError, UserError

SANDAL = "sandal 👡 straps"
RGBA_COLOR = (10, 200, 30, 128)
PALETTE_COLOR = (250, 20, 90)
I16_VALUE = 40000  # 40000 >> 8 == 156; Pillow's plain convert("L") would clip it to 255


def _gray(h: int, w: int, value: int) -> Image.Image:
    return Image.fromarray(np.full((h, w), value, dtype=np.uint8), mode="L")


def _rgb(h: int, w: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.fromarray(np.tile(np.asarray(color, dtype=np.uint8), (h, w, 1)), mode="RGB")


# Expected (id -> (height, width)) of every readable image in the tree below.
SIZES = {
    "bag/a.png": (16, 16),
    "bag/b.png": (16, 16),
    "bag/sub/nested.png": (8, 10),
    "coat/i16.png": (12, 14),
    "coat/palette.png": (9, 9),
    "coat/photo.jpg": (24, 24),
    "coat/rgba.png": (20, 12),
    f"{SANDAL}/one.jpeg": (30, 17),
    f"{SANDAL}/three.bmp": (7, 5),
    f"{SANDAL}/two.gif": (11, 13),
}
BROKEN = {"bag/broken.png", "coat/empty.jpg"}


def write_tree(root: Path) -> Path:
    """A labeled tree with every kind of file a real folder holds: good images in many modes and sizes,
    a nested folder, a corrupt PNG, an empty JPEG, a text file and a hidden file."""
    for cls in ("bag", "bag/sub", "coat", SANDAL):
        (root / cls).mkdir(parents=True, exist_ok=True)
    _gray(16, 16, 50).save(root / "bag/a.png")
    _gray(16, 16, 90).save(root / "bag/b.png")
    _gray(8, 10, 120).save(root / "bag/sub/nested.png")
    (root / "bag/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (root / "bag/notes.txt").write_text("not an image")
    (root / "bag/.DS_Store").write_bytes(b"\x00\x01junk")
    (root / "bag/._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, hidden
    Image.new("RGBA", (12, 20), RGBA_COLOR).save(root / "coat/rgba.png")
    Image.fromarray(np.full((12, 14), I16_VALUE, dtype=np.uint16)).save(root / "coat/i16.png")
    pal = Image.new("P", (9, 9), 1)
    pal.putpalette([0, 0, 0, *PALETTE_COLOR] + [0] * (256 * 3 - 6))
    pal.info["transparency"] = 0
    pal.save(root / "coat/palette.png", transparency=0)
    _rgb(24, 24, (200, 100, 50)).save(root / "coat/photo.jpg", quality=95)
    (root / "coat/empty.jpg").write_bytes(b"")
    _rgb(30, 17, (0, 0, 255)).save(root / f"{SANDAL}/one.jpeg")
    _rgb(11, 13, (255, 0, 0)).convert("P").save(root / f"{SANDAL}/two.gif")
    _rgb(7, 5, (0, 255, 0)).save(root / f"{SANDAL}/three.bmp")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "train")


# --------------------------------------------------------------------------------------------------
# ImageFolderSource


def test_image_folder_counts_skips_ids_and_labels(tree: Path) -> None:
    with pytest.warns(SkippedImagesWarning, match=r"skipped 2 unreadable") as rec:
        src = ImageFolderSource(tree, in_chans=3)
    assert len([w for w in rec if issubclass(w.category, SkippedImagesWarning)]) == 1
    assert "bag/broken.png" in str(rec[0].message)
    assert src.classes == ["bag", "coat", SANDAL]
    assert src.image_ids() == sorted(SIZES)
    assert len(src) == len(SIZES)
    assert {iid for iid, _ in src.skipped} == BROKEN
    assert dict(src.skipped)["coat/empty.jpg"] == "empty file"
    expected = [src.classes.index(iid.split("/")[0]) for iid in src.image_ids()]
    assert src.labels.dtype == np.int64 and src.labels.tolist() == expected
    assert src.hidden_labels is None
    assert "10 images" in src.describe() and "2 unreadable" in src.describe()


@pytest.mark.parametrize("in_chans", [1, 3])
def test_image_folder_load_shapes_and_modes(tree: Path, in_chans: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        src = ImageFolderSource(tree, in_chans=in_chans)
    images = {src.image_id(i): src.load(i) for i in range(len(src))}
    for iid, img in images.items():
        assert img.dtype == np.uint8 and img.shape == (*SIZES[iid], in_chans), iid
    # 16-bit grayscale is scaled to 8 bits, not clipped.
    assert np.all(images["coat/i16.png"] == I16_VALUE >> 8)
    if in_chans == 3:
        assert images["coat/rgba.png"][0, 0].tolist() == list(RGBA_COLOR[:3])
        assert images["coat/palette.png"][0, 0].tolist() == list(PALETTE_COLOR)
        assert images["bag/a.png"][0, 0].tolist() == [50, 50, 50]
    else:
        r, g, b = RGBA_COLOR[:3]
        assert abs(int(images["coat/rgba.png"][0, 0, 0]) - round(0.299 * r + 0.587 * g + 0.114 * b)) <= 1
        assert images["bag/a.png"][0, 0, 0] == 50


def test_image_folder_without_verify_raises_at_load(tree: Path) -> None:
    src = ImageFolderSource(tree, in_chans=3, verify=False)
    assert src.skipped == [] and len(src) == len(SIZES) + len(BROKEN)
    i = src.image_ids().index("coat/empty.jpg")
    with pytest.raises(ImageDecodeError) as exc:
        src.load(i)
    assert exc.value.image_id == "coat/empty.jpg" and exc.value.reason == "empty file"
    with pytest.raises(ImageDecodeError, match="bag/broken.png"):
        src.load(src.image_ids().index("bag/broken.png"))


def test_subset_and_pickle_keep_ids_and_labels(tree: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        src = ImageFolderSource(tree, in_chans=3)
    sub = src.subset([9, 0, 4])
    assert sub.image_ids() == [src.image_id(9), src.image_id(0), src.image_id(4)]
    assert sub.labels.tolist() == [src.labels[9], src.labels[0], src.labels[4]]
    assert len(src) == len(SIZES)  # the original is untouched
    clone = pickle.loads(pickle.dumps(sub))
    assert clone.image_ids() == sub.image_ids()
    np.testing.assert_array_equal(clone.load(0), src.load(9))
    with pytest.raises(IndexError):
        src.subset([len(src)])
    mask = np.zeros(len(src), dtype=bool)
    mask[[2, 5]] = True
    assert src.subset(mask).image_ids() == [src.image_id(2), src.image_id(5)]


def test_positions_look_ids_up_and_follow_subsets(tree: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        src = ImageFolderSource(tree, in_chans=3)
    ids = [src.image_id(3), "no/such.png", src.image_id(0)]
    assert src.positions(ids).tolist() == [3, -1, 0]
    # a reordered subset of the same length must not reuse the parent's cached index
    perm = src.subset(list(range(len(src)))[::-1])
    assert perm.positions([src.image_id(0)]).tolist() == [len(src) - 1]
    assert src.positions([src.image_id(0)]).tolist() == [0]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        ImageFolderSource(tmp_path / "nope")
    flat = tmp_path / "flat"
    flat.mkdir()
    _gray(4, 4, 1).save(flat / "x.png")
    with pytest.raises(UserError, match="no class folders"):
        ImageFolderSource(flat)
    root = tmp_path / "tree"
    (root / "good").mkdir(parents=True)
    (root / "only_bad").mkdir()
    _gray(4, 4, 1).save(root / "good/x.png")
    (root / "only_bad/y.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="'only_bad'"), warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        ImageFolderSource(root)
    (root / "only_bad/y.png").unlink()
    with pytest.raises(UserError, match="'only_bad'"):
        ImageFolderSource(root)


def test_truncated_jpeg_is_skipped_and_exif_rotation_applied(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "c").mkdir(parents=True)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    noisy.save(root / "c/full.jpg", quality=90)
    data = (root / "c/full.jpg").read_bytes()
    (root / "c/truncated.jpg").write_bytes(data[: len(data) // 2])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree turn
    noisy.save(root / "c/rotated.jpg", exif=exif)
    with pytest.warns(SkippedImagesWarning, match="truncated"):
        src = ImageFolderSource(root, in_chans=3)
    assert src.image_ids() == ["c/full.jpg", "c/rotated.jpg"]
    assert src.load(0).shape == (64, 48, 3) and src.load(1).shape == (48, 64, 3)


# --------------------------------------------------------------------------------------------------
# UnlabeledFolderSource


def test_unlabeled_folder_nested(tmp_path: Path) -> None:
    root = tmp_path / "unl"
    (root / "deep/er").mkdir(parents=True)
    _gray(5, 6, 7).save(root / "top.png")
    _rgb(8, 8, (1, 2, 3)).save(root / "deep/x.jpg")
    _gray(3, 3, 9).save(root / "deep/er/y.PNG")
    (root / "deep/readme.txt").write_text("ignored")
    (root / "deep/bad.png").write_bytes(b"not a png")
    src = UnlabeledFolderSource(root, in_chans=3)
    assert src.image_ids() == ["deep/bad.png", "deep/er/y.PNG", "deep/x.jpg", "top.png"]
    assert src.classes is None and src.labels is None and src.hidden_labels is None
    assert src.load(3).shape == (5, 6, 3)
    with pytest.raises(ImageDecodeError) as exc:
        src.load(0)
    assert exc.value.image_id == "deep/bad.png"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub/a.txt").write_text("x")
    with pytest.raises(UserError, match="holds no images"):
        UnlabeledFolderSource(empty)
    with pytest.raises(UserError, match="not found"):
        UnlabeledFolderSource(tmp_path / "missing")


def test_unlabeled_folder_verify_on_many_files_keeps_order(tmp_path: Path) -> None:
    # enough files for the threaded check; the result must not depend on thread timing
    root = tmp_path / "many"
    root.mkdir()
    for k in range(70):
        _gray(4, 4, k).save(root / f"{k:03d}.png")
    (root / "010x.png").write_bytes(b"bad")
    (root / "050x.png").write_bytes(b"")
    with pytest.warns(SkippedImagesWarning, match="skipped 2"):
        src = UnlabeledFolderSource(root, in_chans=1, verify=True)
    assert src.image_ids() == [f"{k:03d}.png" for k in range(70)]
    assert [iid for iid, _ in src.skipped] == ["010x.png", "050x.png"]
    assert src.load(69)[0, 0, 0] == 69


# --------------------------------------------------------------------------------------------------
# manifests


def _manifest_images(folder: Path) -> list[str]:
    (folder / "imgs").mkdir(parents=True)
    names = []
    for k in range(6):
        name = f"imgs/{k}.png"
        _gray(6, 6, 10 * k).save(folder / name)
        names.append(name)
    return names


def test_manifest_csv_string_labels_relative_to_manifest(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    names = _manifest_images(data)
    labels = ["dog", "cat", "dog", "emu", "cat", "dog"]
    pd.DataFrame({"path": names, "label": labels}).to_csv(data / "train.csv", index=False)
    monkeypatch.chdir(tmp_path)  # relative paths must resolve against the manifest, not the cwd
    src = ManifestSource("data/train.csv", in_chans=1)
    assert src.classes == ["cat", "dog", "emu"]
    assert src.labels.tolist() == [1, 0, 1, 2, 0, 1]
    assert src.image_ids() == names
    assert src.load(3).shape == (6, 6, 1) and src.load(3)[0, 0, 0] == 30
    given = ManifestSource(data / "train.csv", in_chans=1, classes=["emu", "dog", "cat"])
    assert given.labels.tolist() == [1, 2, 1, 0, 2, 1]
    with pytest.raises(UserError, match="'dog'"):
        ManifestSource(data / "train.csv", in_chans=1, classes=["cat", "emu"])


def test_manifest_parquet_int_labels_and_skips(tmp_path: Path) -> None:
    names = _manifest_images(tmp_path)
    (tmp_path / "imgs/5.png").write_bytes(b"")
    df = pd.DataFrame({"path": names + ["imgs/missing.png"], "label": [0, 2, 1, 2, 0, 1, 1]})
    df.to_parquet(tmp_path / "m.parquet")
    with pytest.warns(SkippedImagesWarning, match="skipped 2"):
        src = ManifestSource(tmp_path / "m.parquet", in_chans=3)
    assert src.classes == ["0", "1", "2"]
    assert src.labels.tolist() == [0, 2, 1, 2, 0]
    assert dict(src.skipped) == {"imgs/5.png": "empty file", "imgs/missing.png": "file not found"}
    assert src.load(0).shape == (6, 6, 3)
    with pytest.raises(UserError, match="index 2"):
        ManifestSource(tmp_path / "m.parquet", in_chans=3, classes=["a", "b"], verify=False)
    # int labels given as CSV text; no label column at all makes an unlabeled source
    df.to_csv(tmp_path / "m.csv", index=False)
    assert ManifestSource(tmp_path / "m.csv", 3, verify=False).labels.tolist() == df["label"].tolist()
    df[["path"]].to_csv(tmp_path / "u.csv", index=False)
    unl = ManifestSource(tmp_path / "u.csv", 3, verify=False)
    assert unl.classes is None and unl.labels is None and len(unl) == 7


def test_manifest_bad_columns_name_file_and_column(tmp_path: Path) -> None:
    pd.DataFrame({"file": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "nopath.csv", index=False)
    with pytest.raises(UserError, match=r"nopath\.csv.*'path'"):
        ManifestSource(tmp_path / "nopath.csv", 3)
    pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", ""]}).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(UserError, match=r"gap\.csv.*'label'.*row\(s\) 3"):
        ManifestSource(tmp_path / "gap.csv", 3, verify=False)
    pd.DataFrame({"path": ["a.png", "a.png"]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(UserError, match="duplicate"):
        ManifestSource(tmp_path / "dup.csv", 3, verify=False)
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(UserError, match=r"\.csv or \.parquet"):
        ManifestSource(tmp_path / "m.json", 3)
    with pytest.raises(UserError, match="not found"):
        ManifestSource(tmp_path / "absent.csv", 3)


# --------------------------------------------------------------------------------------------------
# create_data for folders and manifests


def _class_tree(root: Path, classes: dict[str, int]) -> Path:
    for ci, (cls, n) in enumerate(classes.items()):
        (root / cls).mkdir(parents=True)
        for k in range(n):
            _gray(8, 8, 20 * ci + k).save(root / cls / f"{k}.png")
    return root


def test_create_data_folder_remaps_test_classes_and_limits(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"ant": 3, "bee": 3, "cow": 3})
    _class_tree(tmp_path / "test", {"bee": 2, "cow": 4})
    unl = tmp_path / "unl"
    unl.mkdir()
    for k in range(20):
        _gray(8, 8, k).save(unl / f"u{k:02d}.png")
    cfg = DataConfig(kind="folder", labeled=str(tmp_path / "train"), unlabeled=str(unl),
                     test=str(tmp_path / "test"), in_chans=1, unlabeled_limit=7)
    bundle = create_data(cfg)
    assert isinstance(bundle, DataBundle)
    assert bundle.classes == ["ant", "bee", "cow"]
    assert bundle.test.classes == bundle.classes
    assert bundle.test.labels.tolist() == [1, 1, 2, 2, 2, 2]
    assert len(bundle.unlabeled) == 7
    again = create_data(cfg).unlabeled.image_ids()
    assert again == bundle.unlabeled.image_ids()
    assert create_data(DataConfig(**{**cfg.__dict__, "split_seed": 5})).unlabeled.image_ids() != again
    limited = create_data(DataConfig(**{**cfg.__dict__, "test_limit": 3}))
    assert len(limited.test) == 3 and set(limited.test.image_ids()) <= set(bundle.test.image_ids())

    _class_tree(tmp_path / "test2", {"bee": 1, "dragon": 1})
    with pytest.raises(UserError, match="'dragon'"):
        create_data(DataConfig(kind="folder", labeled=str(tmp_path / "train"), test=str(tmp_path / "test2")))


def test_create_data_manifest(tmp_path: Path) -> None:
    names = _manifest_images(tmp_path)
    pd.DataFrame({"path": names[:4], "label": ["a", "b", "a", "b"]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"path": names[4:], "label": ["b", "b"]}).to_parquet(tmp_path / "test.parquet")
    pd.DataFrame({"path": names, "label": ["a"] * 6}).to_csv(tmp_path / "unl.csv", index=False)
    cfg = DataConfig(kind="manifest", labeled=str(tmp_path / "train.csv"), unlabeled=str(tmp_path / "unl.csv"),
                     test=str(tmp_path / "test.parquet"), in_chans=3)
    bundle = create_data(cfg)
    assert bundle.classes == ["a", "b"]
    assert bundle.test.labels.tolist() == [1, 1]
    # labels of the unlabeled manifest are hidden from training
    assert bundle.unlabeled.labels is None and bundle.unlabeled.hidden_labels.tolist() == [0] * 6
    pd.DataFrame({"path": names[4:], "label": ["b", "zebra"]}).to_csv(tmp_path / "bad_test.csv", index=False)
    with pytest.raises(UserError, match="'zebra'"):
        create_data(DataConfig(kind="manifest", labeled=str(tmp_path / "train.csv"),
                               test=str(tmp_path / "bad_test.csv")))


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist_split(require_fmnist: Path) -> None:
    cfg = DataConfig(kind="fashion_mnist", root=str(require_fmnist), labels_per_class=7, split_seed=3, val_fraction=0.0)
    b = create_data(cfg)
    assert b.classes[0] == "T-shirt/top" and b.classes[9] == "Ankle boot" and len(b.classes) == 10
    assert len(b.labeled) == 70 and np.bincount(b.labeled.labels, minlength=10).tolist() == [7] * 10
    assert len(b.unlabeled) == 60_000 - 70 and len(b.test) == 10_000
    assert b.unlabeled.classes is None and b.unlabeled.labels is None
    lab_ids, unl_ids = set(b.labeled.image_ids()), set(b.unlabeled.image_ids())
    assert not lab_ids & unl_ids and len(lab_ids | unl_ids) == 60_000
    assert b.labeled.image_id(0).startswith("train-") and len(b.labeled.image_id(0)) == len("train-00000")

    images, labels = load_fashion_mnist(require_fmnist, "train")
    idx = np.asarray([int(i.split("-")[1]) for i in b.unlabeled.image_ids()])
    np.testing.assert_array_equal(b.unlabeled.hidden_labels, labels[idx])
    lab_idx = np.asarray([int(i.split("-")[1]) for i in b.labeled.image_ids()])
    np.testing.assert_array_equal(b.labeled.labels, labels[lab_idx])
    np.testing.assert_array_equal(b.labeled.load(5)[:, :, 0], images[lab_idx[5]])
    assert b.test.load(0).shape == (28, 28, 1)

    assert create_data(cfg).labeled.image_ids() == b.labeled.image_ids()  # deterministic
    other = create_data(DataConfig(kind="fashion_mnist", root=str(require_fmnist), labels_per_class=7, split_seed=4,
                                   val_fraction=0.0))
    assert other.labeled.image_ids() != b.labeled.image_ids()


def test_fashion_mnist_limits_channels_and_pickle(require_fmnist: Path) -> None:
    cfg = DataConfig(kind="fashion_mnist", root=str(require_fmnist), labels_per_class=10,
                     unlabeled_limit=500, test_limit=200, in_chans=3, split_seed=1, val_fraction=0.0)
    b = create_data(cfg)
    assert len(b.unlabeled) == 500 and len(b.test) == 200
    assert b.unlabeled.image_ids() == create_data(cfg).unlabeled.image_ids()
    # the limit draws from its own stream: the labeled split does not depend on it
    assert b.labeled.image_ids() == create_data(DataConfig(**{**cfg.__dict__, "unlabeled_limit": None})).labeled.image_ids()
    img = b.unlabeled.load(0)
    assert img.shape == (28, 28, 3) and np.array_equal(img[..., 0], img[..., 2])
    blob = pickle.dumps(b.unlabeled)
    assert len(blob) < 100_000  # pixels are not pickled
    np.testing.assert_array_equal(pickle.loads(blob).load(7), b.unlabeled.load(7))
    with pytest.raises(ConfigError, match="data.labels_per_class"):
        create_data(DataConfig(kind="fashion_mnist", root=str(require_fmnist), labels_per_class=6001))
    full = create_data(DataConfig(kind="fashion_mnist", root=str(require_fmnist), labels_per_class=6000, test_limit=10,
                                  val_fraction=0.0))
    assert full.unlabeled is None and len(full.labeled) == 60_000


def test_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz.*apt-get install dataset-fashion-mnist"):
        FashionMNISTSource(tmp_path)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        create_data(DataConfig(kind="fashion_mnist", root=str(tmp_path)))


# --------------------------------------------------------------------------------------------------
# SourceDataset + DataLoader


def test_source_dataset_skips_corrupt_images(tmp_path: Path) -> None:
    root = tmp_path / "unl"
    root.mkdir()
    (root / "a_bad1.png").write_bytes(b"corrupt")
    (root / "a_bad2.png").write_bytes(b"")
    for k in range(5):
        _gray(6, 6, 10 * k).save(root / f"ok{k}.png")
    src = UnlabeledFolderSource(root, in_chans=1, verify=False)
    ds = SourceDataset(src, transform=None)
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate_skip_none)
    batches = list(loader)
    assert batches[0] is EMPTY_BATCH  # both unreadable: the marker the training loop skips
    real = [b for b in batches if b is not None]
    images = torch.cat([b[0] for b in real])
    targets = torch.cat([b[1] for b in real])
    indices = torch.cat([b[2] for b in real])
    assert images.shape == (5, 1, 6, 6) and images.dtype == torch.float32
    assert torch.allclose(images[1, 0, 0, 0], torch.tensor(10 / 255))
    assert targets.tolist() == [-1] * 5 and indices.tolist() == [2, 3, 4, 5, 6]
    assert ds.skipped == 2

    # worker processes count their own skips: the main process's counter stays untouched
    ds2 = SourceDataset(src)
    loader2 = DataLoader(ds2, batch_size=3, num_workers=2, collate_fn=collate_skip_none)
    got = sorted(int(i) for b in loader2 if b is not None for i in b[2])
    assert got == [2, 3, 4, 5, 6] and ds2.skipped == 0


def test_source_dataset_targets_and_transforms(tree: Path) -> None:
    import albumentations as A

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImagesWarning)
        src = ImageFolderSource(tree, in_chans=3)
    n = len(src)
    soft = np.random.default_rng(0).dirichlet(np.ones(3), size=n)
    aug = A.Compose([A.Resize(10, 10), A.HorizontalFlip(p=1.0)])
    ds = SourceDataset(src, aug, targets=soft)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_skip_none)
    x, y, idx = next(iter(loader))
    assert x.shape == (4, 3, 10, 10) and y.shape == (4, 3) and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), soft[:4].astype(np.float32))
    hard = SourceDataset(src, lambda img: img[:4, :4], targets=np.arange(n))
    img, t, i = hard[3]
    assert img.shape == (3, 4, 4) and t.dtype == torch.int64 and int(t) == 3 and i == 3
    labeled = SourceDataset(src)
    assert int(labeled[n - 1][1]) == src.labels[n - 1] == 2
    with pytest.raises(ValueError):
        SourceDataset(src, targets=np.zeros(n + 1, dtype=np.int64))
