"""What every benchmark shares: sizes, timing, the bench's own scratch folders, the table and the JSON.

Why ratios and medians: the benchmarks run on shared machines (2 CPU cores, other people's test runs
at the same time), so an absolute images/s figure says more about the neighbours than about the code.
Each of our measurements is therefore paired with a bare PyTorch loop doing the same work in the same
run, the two are measured alternately (``ours, bare, bare, ours, ...``) so a burst of load hits both,
each pair is repeated and the *median* of the values and of the per-pair ratios is reported.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_FILE = RESULTS_DIR / "bench.json"
CONFIG_FILE = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist.yaml"
SECTIONS = ("teacher", "online", "labeling", "workers")

#: the 1-minute load average after every measurement of this run (see :func:`interleave`)
LOAD_SAMPLES: list[float] = []


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; ``quick`` is a smoke test, ``full`` the real measurement."""

    name: str
    labels_per_class: int  # labeled images for training = 10 x this
    train_steps: int  # optimizer steps per training measurement (batch 64)
    worker_steps: int  # steps per Ray Train worker (each worker runs this many)
    label_images: Optional[int]  # unlabeled images to label (None = all 59,000)
    repeats: int  # alternating ours/bare pairs per row; the median is reported
    worker_repeats: int  # the same for Ray Train rows (each costs a Ray Train start)


QUICK = Sizes("quick", labels_per_class=50, train_steps=6, worker_steps=6, label_images=5_000, repeats=2,
              worker_repeats=1)
FULL = Sizes("full", labels_per_class=200, train_steps=30, worker_steps=20, label_images=None, repeats=3,
             worker_repeats=2)


@dataclass
class Row:
    """One line of the table: our throughput, the bare loop's, and their ratio (ours / bare)."""

    section: str
    name: str
    ours: float  # images/s, median over repeats
    bare: Optional[float]  # images/s of the bare loop it is compared with, median
    ratio: Optional[float]  # median of the per-pair ratios ours / bare
    images: int  # images per measurement
    repeats: int
    threads: str  # torch intra-op threads (per process) used by ours / by bare
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # every raw value, for bench.json
    extra: dict[str, Any] = field(default_factory=dict)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def interleave(repeats: int, measure: dict[str, Callable[[], float]], bar: Any = None) -> dict[str, list[float]]:
    """Run every measurement of ``measure`` once per round, ``repeats`` rounds, reversing the order on
    odd rounds (A B C, C B A, ...) so a drift in machine load hits every side alike. Each callable
    returns images/s; the result holds each name's values in round order (so round ``r`` of two
    names forms a pair)."""
    got: dict[str, list[float]] = {name: [] for name in measure}
    names = list(measure)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if bar is not None:
                bar.set_postfix_str(f"{name} ({r + 1}/{repeats})")
            got[name].append(measure[name]())
            LOAD_SAMPLES.append(load_average()[0])
            if bar is not None:
                bar.update(1)
    return got


def paired_ratio(ours: Sequence[float], bare: Sequence[float]) -> float:
    return median([o / b for o, b in zip(ours, bare) if b > 0])


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (perf_counter wall time)."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:  # not on every platform
        return (float("nan"),) * 3  # type: ignore[return-value]


def scratch_dir(prefix: str) -> Path:
    """A fresh folder for one measurement's run artifacts (removed by :func:`cleanup`)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = RESULTS_DIR / "work"
    work.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=work))


def cleanup() -> None:
    shutil.rmtree(RESULTS_DIR / "work", ignore_errors=True)


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def init_ray() -> float:
    """Start the embedded Ray instance once (``pipelines.ray_runtime.init_ray``); return the seconds it took.

    Ray's token authentication stays on (the default of ``init_ray``'s embedded instance).
    """
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if ray.is_initialized():
        return 0.0
    from pipelines.ray_runtime import init_ray as _init

    with Stopwatch() as sw:
        _init()
    # Ray Data logs every dataset's start and end at INFO and warns that its bars are off (the
    # labeling job shows its own); the bench's progress bars and table say what matters.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return sw.seconds


def fashion_mnist(labels_per_class: int):
    """The config of ``configs/fashion_mnist.yaml`` and its Fashion-MNIST split (seed 0), with
    ``labels_per_class`` x 10 labeled images and *all* the rest (60,000 minus those) unlabeled."""
    import yaml

    from noisystudent.data import create_data
    from pipelines.config import config_from_dict

    data = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    data["data"]["labels_per_class"] = labels_per_class
    data["data"]["unlabeled_limit"] = None  # the file keeps 10,000 for `make run`; labeling uses them all
    cfg = config_from_dict(data)
    return cfg, create_data(cfg.data)


def beats_baseline(gain: float, std: float, seeds: int, base_std: float, base_seeds: int) -> bool:
    """The benchmarks' verdict on a method against its no-teacher baseline: a gain larger than the two seed
    spreads added, with more than one seed on each side (one seed has no spread to compare with)."""
    return bool(seeds > 1 and base_seeds > 1 and gain > std + base_std)


# --------------------------------------------------------------------------------------------------
# output


def _fmt(value: Optional[float], digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def format_table(rows: Iterable[Row], footer: Sequence[str]) -> str:
    """A plain-text table with aligned columns, one line per row, then the footer lines."""
    header = ["section", "benchmark", "ours img/s", "bare img/s", "ours/bare", "images", "reps", "threads", "notes"]
    body = [
        [r.section, r.name, _fmt(r.ours), _fmt(r.bare), _fmt(r.ratio, 2), f"{r.images:,}", str(r.repeats), r.threads, r.note]
        for r in rows
    ]
    widths = [max(len(line[k]) for line in [header] + body) for k in range(len(header))]
    right = {2, 3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule] + [line(b) for b in body] + [rule] + list(footer)
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: these machines have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG to ``path`` (a temporary name, then renamed, like every artifact) and close it."""
    from noisystudent.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return path


def write_results(rows: Sequence[Row], meta: dict[str, Any], path: Path = RESULTS_FILE) -> Path:
    """``bench/results/bench.json``: every row with its raw samples, plus the run's metadata."""
    from noisystudent.io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"meta": meta, "rows": [asdict(r) for r in rows]})
    return path


def parse_sets(values: Iterable[str]) -> dict[str, Any]:
    """A benchmark's ``--set KEY=VALUE`` items as ``{dotted key: YAML value}`` (the CLI's own, with click's
    errors, is :func:`noisystudent.cli.experiment.parse_sets`); a malformed item exits naming it."""
    import yaml

    out = {}
    for item in values:
        if "=" not in item:
            raise SystemExit(f"error: --set: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out
