"""The benchmarks' harness, bare loops and cache: what every bench relies on, and that the GPU check needs no Ray."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from bench import bare, harness
from bench.cache import random_checkpoint, random_teacher, teacher_dir
from bench.sources import array_source, images_for, spec_of

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_and_feed_import_without_ray_or_the_pipeline_runtime():
    """The device machine has no Ray (GPU_NOTES): gpu_check, feed and what they build on must not import it."""
    code = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("ray is blocked in this test")

        sys.meta_path.insert(0, Block())
        import bench.gpu_check, bench.feed, bench.harness, bench.bare, bench.cache  # noqa: E401
        assert "ray" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_interleave_alternates_the_order_and_pairs_rounds():
    calls = []

    def measure(name, value):
        return lambda: calls.append(name) or value

    got = harness.interleave(3, {"ours": measure("ours", 2.0), "bare": measure("bare", 4.0)})
    assert calls == ["ours", "bare", "bare", "ours", "ours", "bare"]
    assert got == {"ours": [2.0] * 3, "bare": [4.0] * 3}
    assert harness.medians(got) == {"ours": 2.0, "bare": 4.0}
    assert harness.paired_ratio(got["ours"], got["bare"]) == 0.5


def test_row_and_tables():
    r = harness.row("training", "x", 100.0, 200.0, note="n")
    assert r == {"section": "training", "name": "x", "ours": 100.0, "bare": 200.0, "ratio": 0.5, "note": "n"}
    assert harness.row("s", "y", 1.0)["ratio"] is None
    text = harness.row_table([r]).splitlines()
    assert text[0].split(" | ")[:3] == ["section ", "measurement", "ours img/s"]
    assert set(text[1]) <= {"-", "+"} and text[2].split(" | ")[-2:] == ["0.50 ", "n"]
    lines = harness.text_table(["a", "bb"], [["1", "2"], ["333", "4"]], right={0}, rule="  ", close=True)
    assert lines == ["  a  bb", "---  --", "  1  2", "333  4", "---  --"]
    assert harness.fmt(float("nan")) == "-" and harness.fmt(1234.5, 1) == "1,234.5"


def test_results_path_and_writer(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    assert harness.results_path("x.json") == harness.RESULTS_DIR / "x.json"
    monkeypatch.setenv("OUT", str(tmp_path))
    assert harness.results_path("x.json") == tmp_path / "x.json"
    assert harness.results_path("x.json", "elsewhere.json") == Path("elsewhere.json")
    path = harness.write_results(tmp_path / "r" / "x.json", {"a": np.float32(1.5), "p": tmp_path, "d": torch.float16})
    assert path.read_text().startswith("{") and '"a": 1.5' in path.read_text() and "torch.float16" in path.read_text()


def test_environment_says_what_a_figure_was_measured_on():
    env = harness.environment("cpu")
    assert env["device"] == "cpu" and env["cpus"] and env["torch"] == torch.__version__ and "gpu" not in env


def test_cache_folder_names_are_stable():
    """Existing caches under runs/cache are found again: the names the benches used before the cache module."""
    key = {"model": "resnet8", "epochs": 1, "per_class": 1200}
    assert teacher_dir("runs/cache", "anomaly", "resnet8", 1, key).name == "anomaly-teacher-resnet8-1ep-bed7c76830"


def test_random_checkpoints_are_seeded_and_written_once(tmp_path):
    spec = spec_of("resnet8", 8, 1)
    a, b = random_checkpoint(spec, "a"), random_checkpoint(spec, "b")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    path = random_teacher(tmp_path, spec)
    stamp = path.stat().st_mtime_ns
    assert random_teacher(tmp_path, spec) == path and path.stat().st_mtime_ns == stamp
    teacher = bare.load_teacher(path, "cpu")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_bare_loops_run_on_a_tiny_model(tmp_path):
    spec = spec_of("resnet8", 8, 1)
    images = images_for(16, 8, 1)
    labels = np.arange(16) % 10
    assert len(array_source(images, labels)) == 16 and array_source(images).image_id(3) == "syn-000003"
    assert bare.train(spec, bare.clean_noise(), images, labels, "cpu", batch_size=4, steps=3) > 0
    teacher = bare.load_teacher(random_teacher(tmp_path, spec_of("resnet8", 8, 1)), "cpu")
    assert bare.train(spec, None, images, labels, "cpu", batch_size=8, epochs=2, teacher=teacher) > 0
    assert bare.ceiling_train(spec, 4, 2, "cpu") > 0
    model = random_checkpoint(spec, "m").build_model("cpu")
    assert bare.label(model, bare.label_loader(images, spec, 5), "cpu") == 16
    assert bare.forward(model, torch.zeros(4, 1, 8, 8), 3, softmax=True) == 12
    nhwc = bare.model_of(spec, "cpu", channels_last=True)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in nhwc.parameters())
    assert all(p.is_contiguous() for p in bare.model_of(spec, "cpu").parameters())


def test_memory_format_bench_prints_its_table_and_writes_json(tmp_path, capsys):
    """``python -m bench.memory_format --quick``: both layouts of each case timed, a ratio, a results file."""
    import json

    from bench import memory_format

    assert memory_format.main(["--quick", "--out", str(tmp_path / "mf.json")]) == 0
    out = capsys.readouterr().out
    assert "NHWC/NCHW" in out and "resnet8" in out and "load average" in out
    rows = json.loads((tmp_path / "mf.json").read_text())["rows"]
    assert len(rows) == len(memory_format.QUICK)
    assert all(r["nchw"] > 0 and r["nhwc"] > 0 and r["ratio"] > 0 for r in rows)
