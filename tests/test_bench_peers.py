"""bench-peers: the protocol is our data code's split, the steps are our loop's, the network wrapper keeps
our model's outputs, and the CPU meter counts what a command's children spend."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bench.peers import protocol as proto
from bench.peers.cputime import run_measured
from bench.peers.usb_run import USBNet


def test_split_is_create_data_split(require_fmnist, tmp_path):
    from noisystudent.data import create_data

    cfg = proto.load("configs/fashion_mnist.yaml", {"data.root": str(require_fmnist), "data.labels_per_class": 10,
                                                    "data.unlabeled_limit": 50, "data.test_limit": 40})
    protocol, split = proto.build(cfg, "configs/fashion_mnist.yaml", {}, tmp_path)
    bundle = create_data(cfg.data)
    z = np.load(split)
    for name, src in (("labeled", bundle.labeled), ("val", bundle.val), ("unlabeled", bundle.unlabeled),
                      ("test", bundle.test)):
        assert np.array_equal(z[f"idx_{name}"], src.indices), name
        assert np.array_equal(z[f"x_{name}"], src.load_all()[..., 0]), name
    assert np.array_equal(z["y_labeled"], bundle.labeled.labels)
    assert np.array_equal(z["y_test"], bundle.test.labels)
    assert not set(z["idx_labeled"]) & set(z["idx_unlabeled"]) and not set(z["idx_val"]) & set(z["idx_labeled"])
    assert protocol["sizes"] == {"labeled": 80, "val": 20, "unlabeled": 50, "test": 40}
    assert protocol["model"]["name"] == cfg.student_model(cfg.student.generations).name
    assert protocol["batch_size"] * protocol["uratio"] == 64 * 3


@pytest.mark.parametrize("train, gens, expected", [
    ({"epochs": 10, "steps_per_epoch": 52}, 2, 1040),
    ({"epochs": 10, "steps_per_epoch": 52, "min_steps": 1000}, 1, 1000),
    ({"epochs": 3, "total_steps": 700, "steps_per_epoch": 5}, 2, 1400),
    ({"epochs": 3, "steps_per_epoch": None}, 1, None),
])
def test_student_steps_follow_the_config(train, gens, expected):
    overrides = {f"student.train.{k}": v for k, v in train.items()}
    cfg = proto.load("configs/fashion_mnist.yaml", {**overrides, "student.generations": gens})
    assert proto.student_steps(cfg) == expected


def test_usbnet_gives_our_logits_and_features():
    from noisystudent.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet8", 10, in_chans=1, drop_rate=0.3).eval()
    net = USBNet(model).eval()
    x = torch.randn(3, 1, 28, 28)
    out = net(x)
    assert torch.allclose(out["logits"], model(x), atol=1e-6)
    assert out["feat"].shape == (3, model.head.num_features)
    assert torch.allclose(net(out["feat"], only_fc=True), out["logits"], atol=1e-6)
    assert torch.allclose(net(x, only_feat=True), out["feat"])


def test_cpu_meter_counts_a_grandchild(tmp_path):
    burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 1.5: pass"
    cmd = [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"]
    rc, wall, cpu = run_measured(cmd, log=tmp_path / "log", interval=0.1)
    assert rc == 0
    assert 1.2 <= cpu <= wall + 0.5


def test_table_and_figure_show_usb_last_weights_beside_its_ema_model(tmp_path):
    """USB reports its EMA model; after a CPU-sized budget that model can be far below its last weights
    (0.999^832 keeps 43 % of the initial weights), so both are in the table and the figure plots the last
    weights as the arm's point, with the EMA model named in the legend when it is off the axis."""
    from bench.peers.table import figure, format_table, summarize

    res = [{"arm": "ours", "seed": s, "test_acc": 0.83 + 0.01 * s, "teacher_acc": 0.79, "cpu_s": 700, "wall_s": 400,
            "generations": [0.81, 0.83], "promoted": ["student", "student"], "student_steps": 832} for s in (0, 1)]
    res += [{"arm": "fixmatch", "seed": s, "test_acc": 0.19, "test_acc_no_ema": 0.81 + 0.002 * s, "cpu_s": 1070,
             "wall_s": 630, "steps": 832} for s in (0, 1)]
    rows = summarize(res)
    fm = next(r for r in rows if r["arm"] == "fixmatch")
    assert fm["test_acc_no_ema_mean"] == pytest.approx(0.811) and fm["test_acc_mean"] == pytest.approx(0.19)
    proto = {"config": "c.yaml", "overrides": {}, "sizes": {"labeled": 900, "val": 100, "unlabeled": 59000, "test": 10000},
             "model": {"name": "resnet14"}, "steps": 832, "batch_size": 64, "uratio": 3, "labels_per_class": 100}
    text = format_table(rows, proto, {"load_avg_end": [1.0], "cpu_count": 2})
    assert "0.1900 ± 0.0000" in text and "0.8110 ± 0.0014" in text and "USB: last weights, no EMA" in text
    png = figure(rows, proto, tmp_path / "peers.png")
    assert png.stat().st_size > 1000
