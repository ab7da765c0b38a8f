"""A model's step in the NCHW and the channels-last (NHWC) memory format, side by side.

Why: ``train.channels_last`` is on by default and the labeling actors always use it
(``docs/engine.md#memory-format``); this is the measurement behind that choice, to rerun on another machine.
Each case builds the same model twice (same seed), one with :func:`noisystudent.models.to_memory_format`,
and times one step of each alternately (:func:`bench.harness.interleave`), medians of the rounds. The
input batch is an ordinary NCHW tensor in both, as the loaders give it.

    PYTHONPATH=$PWD python -m bench.memory_format            # the table; JSON to bench/results/
    PYTHONPATH=$PWD python -m bench.memory_format --quick    # two small cases, a few seconds
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from bench import harness

#: (model, channels, side, torch threads, train, batch)
CASES = [
    ("resnet14", 1, 28, 2, True, 256),
    ("resnet14", 1, 28, 1, True, 256),
    ("resnet14", 1, 28, 1, False, 1024),
    ("resnet14", 1, 28, 2, False, 256),
    ("resnet26", 1, 28, 2, True, 256),
    ("wrn_16_2", 3, 32, 2, True, 128),
    ("efficientnet_b0", 3, 32, 2, True, 64),
    ("resnet18", 3, 32, 2, True, 64),
]
QUICK = [("resnet8", 1, 28, 1, True, 64), ("resnet8", 1, 28, 1, False, 256)]


@dataclass
class Case:
    model: str
    chans: int
    side: int
    threads: int
    train: bool
    batch: int

    @property
    def label(self) -> str:
        return f"{self.model} {self.chans}x{self.side}, {self.threads} thr, {'train' if self.train else 'inference'} b{self.batch}"


def step_fn(case: Case, channels_last: bool) -> Callable[[], float]:
    """One timed step of ``case`` (images/s), after two warm-up steps."""
    import torch
    import torch.nn.functional as F

    from noisystudent.models import create_model, to_memory_format

    torch.manual_seed(0)
    model = to_memory_format(create_model(case.model, num_classes=10, in_chans=case.chans, drop_rate=0.3,
                                          drop_path_rate=0.1), channels_last)
    x = torch.randn(case.batch, case.chans, case.side, case.side)
    y = torch.randint(0, 10, (case.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train(case.train)

    def one() -> None:
        if case.train:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            with torch.inference_mode():
                model(x)

    one(), one()

    def timed() -> float:
        with harness.Stopwatch() as sw:
            one()
        return case.batch / sw.seconds

    return timed


def run(cases: list[Case], repeats: int) -> list[dict[str, Any]]:
    import torch

    rows = []
    for case in cases:
        torch.set_num_threads(case.threads)
        got = harness.interleave(repeats, {"nhwc": step_fn(case, True), "nchw": step_fn(case, False)})
        nhwc, nchw = harness.median(got["nhwc"]), harness.median(got["nchw"])
        rows.append({"case": case.__dict__, "label": case.label, "nchw": nchw, "nhwc": nhwc,
                     "ratio": harness.paired_ratio(got["nhwc"], got["nchw"]), "rounds": got})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small cases")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/memory_format.json)")
    args = ap.parse_args(argv)
    cases = [Case(*c) for c in (QUICK if args.quick else CASES)]
    load_before = harness.load_average()
    rows = run(cases, 2 if args.quick else args.repeats)
    body = [[r["label"], harness.fmt(r["nchw"]), harness.fmt(r["nhwc"]), harness.fmt(r["ratio"], 2)] for r in rows]
    print("\n".join(harness.text_table(["case", "NCHW img/s", "NHWC img/s", "NHWC/NCHW"], body, right={1, 2, 3},
                                       rule="  ")))
    print(f"load average before {load_before[0]:.2f}, after {harness.load_average()[0]:.2f}")
    path = harness.write_results(harness.results_path("memory_format.json", args.out),
                                 {"rows": rows, "environment": harness.environment("cpu"),
                                  "load_before": load_before, "load_samples": harness.LOAD_SAMPLES})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
