"""The run report (``pipelines.report``) and experiment tracking (``pipelines.tracking``).

Everything runs on the session's small real run (conftest ``finished_run``: teacher, Ray Data labeling,
selection, two students on Fashion-MNIST): the report must read what the pipeline actually writes, not
what we think it writes. Partial runs are made by deleting artifacts from a copy of it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from noisystudent.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"accuracy.png", "confidence.png", "class_balance.png", "calibration.png", "curves.png", "confusion.png",
             "samples.png"}

@pytest.fixture(scope="module")
def real_run(finished_run, tmp_path_factory) -> Path:
    """A copy of the session's finished two-generation run (conftest): the report writes into its run folder."""
    return _copy_run(finished_run[0], tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def built(real_run) -> tuple[Path, float]:
    from pipelines.report import build_report

    t0 = time.perf_counter()
    index = build_report(real_run)
    return index, time.perf_counter() - t0


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report", "tensorboard", "mlruns"))
    return dst


def _edit_config(run: Path, **changes) -> None:
    """Change fields of a run's frozen config.yaml (dotted keys), as a resumed run with new settings would."""
    path = run / "config.yaml"
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


class _Page(HTMLParser):
    """Collects every src/href, the <img> sources, notes, and table cells keyed by (data-row, data-key)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs: list[str] = []
        self.tags: set[str] = set()
        self.cells: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []
        self._row: str | None = None
        self._cell: str | None = None
        self._in_note = False
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href"):
            if a.get(key) is not None:
                self.refs.append(a[key])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "tr":
            self._row = a.get("data-row")
        if tag == "td":
            self._cell, self._text = a.get("data-key"), []
        if tag == "p" and a.get("class") == "note":
            self._in_note, self._text = True, []

    def handle_data(self, data):
        if self._cell is not None or self._in_note:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            if self._row is not None:
                self.cells[(self._row, self._cell)] = "".join(self._text)
            self._cell = None
        if tag == "p" and self._in_note:
            self.notes.append("".join(self._text))
            self._in_note = False


def _parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    return page


def _check_png(path: Path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width >= 200 and img.height >= 150, f"{path.name} is suspiciously small: {img.size}"


# --------------------------------------------------------------------------------------------------
# the full report of a finished run


def test_report_writes_every_plot_as_valid_png(real_run, built):
    index, _ = built
    assert index == real_run / "report" / "index.html" and index.is_file()
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert pngs == ALL_PLOTS  # Fashion-MNIST has hidden labels and data: nothing is left out
    for name in pngs:
        _check_png(index.parent / name)


def test_html_is_self_contained_and_references_exist(built):
    index, _ = built
    page = _parse(index)
    assert "script" not in page.tags and "link" not in page.tags  # no JS, no external CSS
    assert len(page.imgs) == len(ALL_PLOTS)
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
    for ref in page.refs:
        assert not ref.startswith(("http:", "https:", "//")), f"external reference {ref}"
        if ref.startswith(("data:", "#")):
            continue
        assert (index.parent / ref).is_file(), f"index.html links to missing {ref}"
    # each embedded image is exactly the PNG file written beside the page
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in page.imgs}
    assert embedded == {(index.parent / n).read_bytes() for n in ALL_PLOTS}


def test_numbers_in_html_match_metrics_json(real_run, built):
    from pipelines.report import fmt_figure
    from pipelines.report.build import SUMMARY_COLUMNS

    index, _ = built
    cells = _parse(index).cells
    teacher = json.loads((real_run / "gen-0/teacher/metrics.json").read_text())
    assert cells[("gen-0", "test_acc")] == f"{teacher['test_acc']:.4f}"
    gen1 = json.loads((real_run / "gen-1/metrics.json").read_text())
    assert cells[("gen-1", "test_acc")] == f"{gen1['test_acc']:.4f}"
    assert cells[("gen-1", "model")] == gen1["model"]
    checked = 0
    for key, _ in SUMMARY_COLUMNS:
        value = gen1.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "generation":
            assert cells[("gen-1", key)] == fmt_figure(key, value), key
            checked += 1
    assert checked >= 4
    # figures a person reads: whole seconds and images/s, accuracies to 4 places (as `noisystudent status`)
    state = json.loads((real_run / "state.json").read_text())
    gen1_seconds = sum(v["seconds"] for k, v in state["steps"].items() if k.startswith("gen-1/"))
    assert cells[("gen-1", "seconds")] == f"{gen1_seconds:,.0f}"
    assert cells[("gen-1", "student_images_per_s")] == f"{gen1['student_images_per_s']:,.0f}"
    assert cells[("gen-1", "labeling_images_per_s")] == f"{gen1['labeling_images_per_s']:,.0f}"
    assert "." not in cells[("gen-0", "seconds")] and "." not in cells[("gen-1", "student_images_per_s")]
    # the timing table lists every finished step of state.json with its seconds (one decimal: some take < 1 s)
    for step, info in state["steps"].items():
        assert cells[(step, "seconds")] == f"{info['seconds']:,.1f}"


def test_report_is_fast_and_deterministic(real_run, built, tmp_path):
    from pipelines.report import build_report

    index, seconds = built
    assert seconds < 10, f"report took {seconds:.1f} s"
    again = build_report(real_run, out_dir=tmp_path / "elsewhere")
    assert again == tmp_path / "elsewhere" / "index.html"
    for name in ALL_PLOTS:
        assert (again.parent / name).read_bytes() == (index.parent / name).read_bytes(), name


def test_report_of_a_run_in_progress(real_run, tmp_path):
    """Generation 1 labeled and selected but its student unfinished, two more generations configured."""
    from pipelines.report import build_report

    run = _copy_run(real_run, tmp_path / "run")
    _edit_config(run, student__generations=3)
    shutil.rmtree(run / "gen-2")
    shutil.rmtree(run / "gen-1/student")
    (run / "gen-1/metrics.json").unlink()
    state = json.loads((run / "state.json").read_text())
    for step in [s for s in state["steps"] if s.startswith("gen-2/")] + ["gen-1/student", "gen-1/evaluate", "gen-1/promote"]:
        state["steps"].pop(step)
    state.get("teachers", {}).pop("3", None)  # what generation 2's promotion recorded
    state.get("promotions", {}).pop("2", None)
    (run / "state.json").write_text(json.dumps(state))

    index = build_report(run)
    page = _parse(index)
    notes = " ".join(page.notes)
    assert "2, 3 of 3 configured have not started" in notes
    assert "confusion matrix is the teacher's" in notes
    assert page.cells[("gen-1", "test_acc")] == "-"
    assert ("gen-2", "test_acc") not in page.cells
    labels = json.loads((run / "gen-1/labels/summary.json").read_text())
    assert page.cells[("gen-1", "pseudo_labels")] == str(labels["rows"])
    for name in ALL_PLOTS:  # every plot still has inputs: teacher curves, gen-1 labels
        _check_png(index.parent / name)

    # labeling of generation 1 not finished: label plots go, stale PNGs are removed, notes say why
    (run / "gen-1/labels/_SUCCESS").unlink()
    shutil.rmtree(run / "gen-1/selected")
    index = build_report(run)
    page = _parse(index)
    notes = " ".join(page.notes)
    assert "labeling has not finished" in notes
    assert not (index.parent / "confidence.png").exists()
    assert not (index.parent / "calibration.png").exists()
    assert (index.parent / "accuracy.png").exists() and (index.parent / "samples.png").exists()
    for ref in page.refs:
        if not ref.startswith(("data:", "#")):
            assert (index.parent / ref).is_file()


def test_report_without_the_data_set(real_run, tmp_path):
    """A run copied to a machine without its images: no samples, no calibration, a note for each."""
    from pipelines.report import build_report

    run = _copy_run(real_run, tmp_path / "run")
    _edit_config(run, data__root=str(tmp_path / "no-such-dataset"))
    index = build_report(run)
    names = {p.name for p in index.parent.glob("*.png")}
    assert names == ALL_PLOTS - {"samples.png", "calibration.png"}
    notes = " ".join(_parse(index).notes)
    assert "could not be loaded" in notes and "Calibration: left out" in notes and "Sample images: left out" in notes


def test_report_only_teacher(real_run, tmp_path):
    from pipelines.report import build_report

    run = _copy_run(real_run, tmp_path / "run")
    shutil.rmtree(run / "gen-1")
    shutil.rmtree(run / "gen-2")
    index = build_report(run, with_data=False)
    assert {p.name for p in index.parent.glob("*.png")} == {"accuracy.png", "curves.png", "confusion.png"}
    notes = " ".join(_parse(index).notes)
    assert "no generation has finished labeling" in notes


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    from pipelines.report import build_report

    with pytest.raises(UserError, match="not a run folder"):
        build_report(tmp_path)


# --------------------------------------------------------------------------------------------------
# pure pieces


def test_fmt_and_reliability():
    from pipelines.report import fmt
    from pipelines.report.plots import reliability

    assert fmt(0.123456) == "0.1235" and fmt(3) == "3" and fmt(None) == "-" and fmt(np.float32(0.5)) == "0.5000"
    from pipelines.report import fmt_figure

    # the figures: seconds and rates were printed as 291.6280 and 145.4000
    assert fmt_figure("seconds", 291.628) == "292" and fmt_figure("labeling_images_per_s", 145.4) == "145"
    assert fmt_figure("student_images_per_s", 1234.56) == "1,235" and fmt_figure("seconds", 2511.2) == "2,511"
    assert fmt_figure("test_acc", 0.891123) == "0.8911" and fmt_figure("pseudo_labels", 59000) == "59000"
    assert fmt_figure("seconds", None) == "-" and fmt_figure("seconds", float("nan")) == "-"
    conf = np.full(100, 0.95)
    correct = np.arange(100) < 95
    r = reliability(conf, correct)
    assert r["ece"] == pytest.approx(0.0, abs=1e-9)
    assert r["count"][9] == 100 and r["accuracy"][9] == pytest.approx(0.95)
    r = reliability(np.array([0.99, 0.99]), np.array([False, False]))
    assert r["ece"] == pytest.approx(0.99)
    r = reliability(np.array([0.15, 0.15, 0.85, 0.85]), np.array([True, False, True, True]))
    assert r["ece"] == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)


# --------------------------------------------------------------------------------------------------
# tracking


def test_tensorboard_events_are_written_once_and_read_back(real_run, tmp_path):
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipelines.tracking import log_run

    run = _copy_run(real_run, tmp_path / "run")
    for _ in range(2):  # idempotent: the second call replaces the first call's events
        tb = log_run(run)
    assert tb == run / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == ["gen-0", "gen-1", "gen-2"]
    for gen in ("gen-0", "gen-1", "gen-2"):
        assert len(list((tb / gen).glob("events.out.tfevents.*"))) == 1

    def load(gen: str) -> EventAccumulator:
        ea = EventAccumulator(str(tb / gen), size_guidance={"scalars": 0, "histograms": 0})
        ea.Reload()
        return ea

    ea = load("gen-1")
    gen1 = json.loads((run / "gen-1/metrics.json").read_text())
    (final,) = ea.Scalars("final/test_acc")
    assert final.step == 1 and final.value == pytest.approx(gen1["test_acc"], abs=1e-6)
    (pl,) = ea.Scalars("pseudo_labels/accuracy")
    assert pl.value == pytest.approx(gen1["pseudo_label_acc"], abs=1e-6)
    selection = json.loads((run / "gen-1/selected/summary.json").read_text())
    assert ea.Scalars("selection/rows_selected")[0].value == selection["rows_selected"]
    (hist,) = ea.Histograms("pseudo_labels/confidence")
    assert hist.histogram_value.num == gen1["pseudo_labels"]
    history = pd.read_csv(run / "gen-1/student/history.csv")
    assert [e.step for e in ea.Scalars("train/loss")] == history["epoch"].tolist()
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx(history["train_loss"].tolist(), rel=1e-6)

    teacher = load("gen-0")
    history = pd.read_csv(run / "gen-0/teacher/history.csv")
    assert len(teacher.Scalars("train/acc")) == len(history)


def test_mlflow_backend_without_mlflow_is_a_user_error(real_run, monkeypatch):
    from pipelines.tracking import log_run

    # a None entry makes `import mlflow` raise ImportError, as on a machine without the package
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(UserError, match="pip install mlflow"):
        log_run(real_run, backend="mlflow")
    assert not (real_run / "mlruns").exists()


def test_mlflow_backend_logs_one_run_per_generation(real_run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for reading back; log_run sets it itself
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import log_run

    run = _copy_run(real_run, tmp_path / "run")
    log_run(run, backend="mlflow")
    store = log_run(run, backend="mlflow")
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["gen-0", "gen-1", "gen-2"]
    gen1 = next(r for r in runs if r.info.run_name == "gen-1")
    expected = json.loads((run / "gen-1/metrics.json").read_text())["test_acc"]
    assert gen1.data.metrics["final/test_acc"] == pytest.approx(expected)


def test_unknown_backend_is_a_user_error(tmp_path):
    from pipelines.tracking import log_run

    with pytest.raises(UserError, match="unknown tracking backend 'wandb'"):
        log_run(tmp_path, backend="wandb")


# --------------------------------------------------------------------------------------------------
# the page in a real browser


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    index, _ = built
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        f"--screenshot={shot}", "--window-size=1280,2400", index.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.is_file(), f"no screenshot; chromium said:\n{proc.stderr[-3000:]}"
    _check_png(shot)
    errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, "\n".join(errors)
    from PIL import Image

    with Image.open(shot) as img:  # the page drew something: not one flat colour
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
