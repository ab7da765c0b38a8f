"""What every benchmark shares: timing and interleaving, the environment, the table and the results file.

Why ratios and medians: the benchmarks run on shared machines (2 CPU cores, other people's test runs
at the same time), so an absolute images/s figure says more about the neighbours than about the code.
Each of our measurements is therefore paired with a bare PyTorch loop (:mod:`bench.bare`) doing the same
work in the same run, the two are measured alternately (``ours, bare, bare, ours, ...``) so a burst of
load hits both, each pair is repeated and the *median* of the values and of the per-pair ratios is
reported.

Nothing here imports Ray, torch or the ``pipelines`` package at import time: ``bench.gpu_check`` runs on a
machine without Ray (``/work/shared/GPU_NOTES.md``) and builds on this module.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: the 1-minute load average after every measurement of this run (see :func:`interleave`)
LOAD_SAMPLES: list[float] = []


# --------------------------------------------------------------------------------------------------
# timing


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (perf_counter wall time)."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def sync(device: Any) -> None:
    """Wait for the GPU's queued work (a no-op on a CPU): a timed span ends when the work has."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], int], device: Any = "cpu") -> float:
    """Images/s of ``fn`` (which returns how many images it processed), synchronised on the GPU."""
    sync(device)
    t0 = time.perf_counter()
    n = fn()
    sync(device)
    return n / max(time.perf_counter() - t0, 1e-9)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def mean_std(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation over seeds of the values that are not None (std 0 for one value);
    ``(None, None)`` when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def medians(got: dict[str, list[float]]) -> dict[str, float]:
    """Each name's median of an :func:`interleave` result."""
    return {k: median(v) for k, v in got.items()}


def paired_ratio(ours: Sequence[float], bare: Sequence[float]) -> float:
    """The median of the per-round ratios ``ours / bare`` (round ``r`` of both forms a pair)."""
    return median([o / b for o, b in zip(ours, bare) if b > 0])


def interleave(repeats: int, measure: dict[str, Callable[[], float]], bar: Any = None) -> dict[str, list[float]]:
    """Run every measurement of ``measure`` once per round, ``repeats`` rounds, reversing the order on
    odd rounds (A B C, C B A, ...) so a drift in machine load hits every side alike. Each callable
    returns images/s; the result holds each name's values in round order (so round ``r`` of two
    names forms a pair). The 1-minute load average after each measurement goes to :data:`LOAD_SAMPLES`."""
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


def history_rate(out_dir: Path, epochs: str = "mean") -> float:
    """Our training loop's own images/s, from a job's ``history.csv``: the ``mean`` over its epochs or the
    ``last`` epoch's (the first of a short job starts loader workers and warms cuDNN)."""
    import pandas as pd

    col = pd.read_csv(Path(out_dir) / "history.csv")["images_per_s"]
    return float(col.iloc[-1] if epochs == "last" else col.mean())


# --------------------------------------------------------------------------------------------------
# environment


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:  # not on every platform
        return (float("nan"),) * 3  # type: ignore[return-value]


def resolve_device(name: str = "auto") -> Any:
    """``auto`` (cuda when available), ``cuda`` (the first GPU unless an index is given) or ``cpu``, as a
    ``torch.device``."""
    import torch

    dev = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    return torch.device("cuda", 0) if dev.type == "cuda" and dev.index is None else dev


def environment(device: Any = None) -> dict[str, Any]:
    """What a figure was measured on: Python, torch and its threads, the CPUs, albumentations and, on a GPU,
    the GPU, its memory, CUDA, cuDNN, bf16 and NCCL. ``device`` defaults to :func:`resolve_device`."""
    import torch

    dev = resolve_device() if device is None else torch.device(device)
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(dev),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        import albumentations

        env["albumentations"] = albumentations.__version__
    except Exception as exc:  # noqa: BLE001 - the GPU machine may lack it; say so
        env["albumentations"] = f"missing ({exc})"
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update({
            "gpu": torch.cuda.get_device_name(dev),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
        })
    return env


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


def quiet_warnings(*messages: str, categories: Sequence[type] = ()) -> None:
    """Silence the project's budget warnings of deliberately short jobs (and ``messages``, ``categories``)."""
    import warnings

    from noisystudent.errors import NoisyStudentWarning

    for cat in (NoisyStudentWarning, *categories):
        warnings.filterwarnings("ignore", category=cat)
    for msg in messages:
        warnings.filterwarnings("ignore", message=msg)


# --------------------------------------------------------------------------------------------------
# scratch space


def scratch_dir(prefix: str) -> Path:
    """A fresh folder for one measurement's run artifacts (removed by :func:`cleanup`)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = RESULTS_DIR / "work"
    work.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=work))


def cleanup() -> None:
    shutil.rmtree(RESULTS_DIR / "work", ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# results: rows, tables, the JSON file, figures


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


def row(section: str, name: str, ours: Optional[float], bare: Optional[float] = None, **extra: Any) -> dict[str, Any]:
    """One measurement as a plain dict (the GPU check's and bench.feed's rows): ratio = ours / bare."""
    ratio = ours / bare if (ours is not None and bare) else None
    return {"section": section, "name": name, "ours": ours, "bare": bare, "ratio": ratio, **extra}


def fmt(value: Optional[float], digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def text_table(head: Sequence[str], body: Iterable[Sequence[str]], right: Iterable[int] = (), sep: str = "  ",
               rule: Optional[str] = None, close: bool = False) -> list[str]:
    """Aligned plain-text lines: the header, then one line per row; columns in ``right`` right-aligned.
    ``rule`` (the separator of a rule's dashes, e.g. ``"  "`` or ``"-+-"``) draws a rule under the header
    and, with ``close``, under the last row."""
    body = [[str(c) for c in line] for line in body]
    widths = [max(len(line[k]) for line in [list(head)] + body) for k in range(len(head))]
    right = set(right)

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))]
        return sep.join(out).rstrip()

    lines = [line(head)] + [line(b) for b in body]
    if rule is not None:
        dashes = rule.join("-" * w for w in widths)
        lines.insert(1, dashes)
        if close:
            lines.append(dashes)
    return lines


def format_table(rows: Iterable[Row], footer: Sequence[str]) -> str:
    """The table of :class:`Row` s: aligned columns, one line per row, then the footer lines."""
    header = ["section", "benchmark", "ours img/s", "bare img/s", "ours/bare", "images", "reps", "threads", "notes"]
    body = [
        [r.section, r.name, fmt(r.ours), fmt(r.bare), fmt(r.ratio, 2), f"{r.images:,}", str(r.repeats), r.threads, r.note]
        for r in rows
    ]
    return "\n".join(text_table(header, body, right={2, 3, 4, 5, 6}, rule="  ", close=True) + list(footer))


def row_table(rows: Iterable[dict[str, Any]], ours: str = "ours img/s", note: bool = True) -> str:
    """The table of :func:`row` dicts: section, measurement, ours, bare, ratio (and the note)."""
    head = ["section", "measurement", ours, "bare img/s", "ratio"] + (["note"] if note else [])
    body = [[r["section"], r["name"], fmt(r["ours"]), fmt(r["bare"]), fmt(r["ratio"], 2)] + ([r["note"]] if note else [])
            for r in rows]
    return "\n".join(text_table(head, body, sep=" | ", rule="-+-"))


def results_path(name: str, out: Optional[str] = None) -> Path:
    """Where a results file goes: ``out`` when given, else ``$OUT/<name>`` when ``$OUT`` is set (the device
    machine brings back what is written there), else ``bench/results/<name>``."""
    if out:
        return Path(out)
    return Path(os.environ["OUT"]) / name if os.environ.get("OUT") else RESULTS_DIR / name


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, tensors
        return obj.tolist()
    return os.fspath(obj) if isinstance(obj, os.PathLike) else str(obj)


def write_results(path: Path, payload: dict[str, Any]) -> Path:
    """A benchmark's results as JSON at ``path`` (written to a temporary name, then renamed); a value JSON
    has no type for is written as its string rather than losing the run's figures."""
    from noisystudent.io import write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(payload, indent=1, default=_jsonable) + "\n")
    return path


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


def beats_baseline(gain: float, std: float, seeds: int, base_std: float, base_seeds: int) -> bool:
    """The benchmarks' verdict on a method against its no-teacher baseline: a gain larger than the two seed
    spreads added, with more than one seed on each side (one seed has no spread to compare with)."""
    return bool(seeds > 1 and base_seeds > 1 and gain > std + base_std)


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
