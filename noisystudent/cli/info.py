"""What is installed and registered: ``methods`` (the distillation registry) and ``doctor`` (versions,
Ray, GPUs, dataset paths)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .common import json_option


@click.command()
@json_option
def methods(as_json):
    """The registered distillation methods: teacher, parameters and their defaults."""
    from ..distill import get_method, list_methods, method_defaults

    rows = [{"name": n, "teacher": get_method(n).teacher, "params": method_defaults(n), "summary": get_method(n).summary}
            for n in list_methods()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        click.echo(f"{r['name']:<14} teacher: {r['teacher']:<8} {params}")
        click.echo(f"{'':<14} {r['summary']}")


def _line(k, v) -> None:
    click.echo(f"{k:<22} {v}")


def _doctor_ray() -> None:
    """Whether Ray starts here (or connects to ``RAY_ADDRESS``), after stopping leftovers of killed drivers."""
    try:
        import ray

        from pipelines.ray_runtime import init_ray, reap_orphans

        reaped = reap_orphans()
        if reaped:
            _line("ray leftovers", f"stopped {len(reaped)} processes of embedded instances whose driver was killed")

        was_up = ray.is_initialized()
        res = init_ray(os.environ.get("RAY_ADDRESS"))
        _line("ray", f"{'running' if was_up else 'started'}: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs")
        if not was_up:
            ray.shutdown()
    except Exception as exc:  # noqa: BLE001
        _line("ray", f"FAILED to start: {exc}")


@click.command()
def doctor() -> None:
    """Versions, whether Ray can start, GPUs seen, dataset paths found."""
    import platform

    from ..config import DataConfig

    _line("python", platform.python_version())
    for mod in ("noisystudent", "torch", "torchvision", "ray", "albumentations", "pandas", "pyarrow", "click"):
        try:
            m = __import__(mod)
            _line(mod, getattr(m, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - doctor reports every failure
            _line(mod, f"NOT IMPORTABLE ({exc})")
    import torch

    _line("cuda available", torch.cuda.is_available())
    _line("gpus", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none")
    root = Path(DataConfig().root)
    found = (root / "train-images-idx3-ubyte.gz").is_file()
    _line("fashion-mnist", f"{root} ({'found' if found else 'missing: apt-get install dataset-fashion-mnist'})")
    _doctor_ray()


COMMANDS = (methods, doctor)
