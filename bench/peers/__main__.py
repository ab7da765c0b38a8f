"""``make bench-peers``: our Noisy Student loop beside USB's FixMatch and Pseudo-Label, same protocol.

``python -m bench.peers [CONFIG] [--seeds 0,1] [--quick]`` (CONFIG: configs/fashion_mnist.yaml). For each
seed it runs our loop through the CLI (``noisystudent run CONFIG --set seed=S``), then USB's
``fixmatch`` and ``pseudolabel`` (:mod:`bench.peers.usb_run`, in the bench environment ``.venv-peers``)
on the split, network, steps and batch of :mod:`bench.peers.protocol`, each arm a subprocess whose whole
process tree's CPU time is measured (:mod:`bench.peers.cputime`). Prints one table (test accuracy mean
± std over seeds, CPU and wall minutes), writes the JSON and a figure (``docs/bench-peers.json/.png``;
``--quick``: ``bench/results/peers-quick.*``). Finished arms are kept under ``--work-dir`` and reused,
so a killed benchmark continues; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from bench.harness import parse_sets
from bench.peers import protocol as proto
from bench.peers.cputime import run_measured
from bench.peers.table import figure, format_table, summarize

ROOT = Path(__file__).resolve().parents[2]
USB_ARMS = ("fixmatch", "pseudolabel")
# Ray gives its raylet a fixed 30 s to register; on a machine loaded far past its cores it may not, and our
# arm (a resumable run folder) is then simply started again
RAY_START_TIMEOUT, RAY_START_TRIES = "node timed out during startup", 4



def _set_flags(overrides: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in overrides.items():
        flags += ["--set", f"{key}={'null' if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return flags


def ours_result(run_dir: Path) -> dict:
    """Test accuracy of the teacher, of each generation and of the model the loop ends with (the last
    promoted one), and the student optimizer steps the run took, read from its folder."""
    from noisystudent.io import read_json
    from pipelines.loop import status_rows
    from pipelines.state import RunDir

    run = RunDir(run_dir)
    rows = [r for r in status_rows(run) if isinstance(r["generation"], int)]
    final = rows[0]
    steps = 0
    for r in rows[1:]:
        mfile = run.model_dir(r["generation"]) / "metrics.json"
        if mfile.is_file():
            steps += int(read_json(mfile).get("steps", 0))
        if r.get("promoted"):
            final = r
    return {"teacher_acc": rows[0]["test_acc"], "generations": [r["test_acc"] for r in rows[1:]],
            "promoted": [r.get("promoted") for r in rows[1:]], "final_generation": final["generation"],
            "test_acc": final["test_acc"], "student_steps": steps}


def _arm(name: str, seed: int, cmd: list[str], work: Path, env: dict, fresh: bool, read) -> dict:
    """Run one arm for one seed (or reuse its finished result) and return its result with timings."""
    out = work / f"{name}-seed{seed}.json"
    if out.is_file() and not fresh:
        print(f"[{name} seed {seed}] reusing {out}", flush=True)
        return json.loads(out.read_text(encoding="utf-8"))
    print(f"[{name} seed {seed}] {' '.join(cmd[:6])} ...", flush=True)
    log = work / f"{name}-seed{seed}.log"
    wall = cpu = 0.0
    for attempt in range(1, RAY_START_TRIES + 1):
        rc, w, c = run_measured(cmd, env=env, log=log)
        wall, cpu = wall + w, cpu + c  # a failed start's cost counts too
        if rc == 0 or RAY_START_TIMEOUT not in log.read_text(encoding="utf-8", errors="replace"):
            break
        print(f"[{name} seed {seed}] Ray did not start in time (try {attempt}/{RAY_START_TRIES}); again", flush=True)
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise SystemExit(f"error: arm {name} seed {seed} failed (exit {rc}); last lines of {log}:\n" + "\n".join(tail))
    result = {"arm": name, "seed": seed, **read(), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "load_avg_after": os.getloadavg()[0]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(out)
    print(f"[{name} seed {seed}] test accuracy {result['test_acc']:.4f}, {cpu / 60:.1f} CPU min, {wall / 60:.1f} min",
          flush=True)
    return result


def run_bench(config: str, seeds: list[int], overrides: dict, work: Path, peers_python: Path, arms: list[str],
              fresh: bool) -> tuple[dict, list[dict]]:
    cfg = proto.load(config, overrides)
    protocol, split = proto.build(cfg, config, overrides, work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    results = []
    for seed in seeds:
        if "ours" in arms:
            cmd = [sys.executable, "-m", "noisystudent.cli", "run", config, "--run-dir", str(work / f"ours-seed{seed}"),
                   "--tracking", "none", "--quiet", "--set", f"seed={seed}"] + _set_flags(overrides)
            r = _arm("ours", seed, cmd, work, env, fresh, lambda s=seed: ours_result(work / f"ours-seed{s}"))
            results.append(r)
            if protocol["steps"] is None:  # an epoch was one pass over the pseudo-labels: take the run's steps
                protocol["steps"] = r["student_steps"]
        if protocol["steps"] is None:
            raise SystemExit("error: the student steps are set by the pseudo-label count; run the 'ours' arm first")
        pfile = work / "protocol.json"
        pfile.write_text(json.dumps(protocol, indent=2), encoding="utf-8")
        for alg in [a for a in USB_ARMS if a in arms]:
            out = work / f"usb-{alg}-seed{seed}.result.json"
            cmd = [str(peers_python), "-m", "bench.peers.usb_run", "--split", str(split), "--protocol", str(pfile),
                   "--algorithm", alg, "--seed", str(seed), "--out", str(out)]
            results.append(_arm(alg, seed, cmd, work, env, fresh,
                                lambda o=out: json.loads(o.read_text(encoding="utf-8"))))
    return protocol, results


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/fashion_mnist.yaml")
    ap.add_argument("--seeds", default="0,1", help="training seeds, comma-separated (the split stays data.split_seed's)")
    ap.add_argument("--quick", action="store_true", help="a smoke test of minutes: tiny sets and budgets, one seed")
    ap.add_argument("--arms", default="ours,fixmatch,pseudolabel")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field for every arm (repeatable)")
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                    help="the bench environment's python (make bench-peers creates it)")
    ap.add_argument("--work-dir", default=None, help="run folders and per-arm results (default: bench/results/peers[-quick])")
    ap.add_argument("--fresh", action="store_true", help="run every arm again instead of reusing finished ones")
    args = ap.parse_args(argv)
    overrides = {**(proto.QUICK_OVERRIDES if args.quick else {}), **parse_sets(args.sets)}
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    arms = [a.strip() for a in args.arms.split(",")]
    bad = [a for a in arms if a not in ("ours",) + USB_ARMS]
    if bad:
        raise SystemExit(f"error: --arms: unknown arm {bad[0]!r} (ours, fixmatch, pseudolabel)")
    peers_python = Path(args.peers_python)
    if any(a in USB_ARMS for a in arms) and not peers_python.is_file():
        raise SystemExit(f"error: --peers-python: {peers_python} not found; `make bench-peers` creates .venv-peers")
    tag = "peers-quick" if args.quick else "peers"
    work = Path(args.work_dir or ROOT / "bench" / "results" / tag)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    protocol, results = run_bench(args.config, seeds, overrides, work, peers_python, arms, args.fresh)
    rows = summarize(results)
    meta = {"config": args.config, "seeds": seeds, "quick": args.quick, "protocol": protocol,
            "load_avg_end": os.getloadavg(), "cpu_count": os.cpu_count(), "wall_s": round(time.perf_counter() - t0, 1),
            "command": " ".join(["python -m bench.peers"] + (argv if argv is not None else sys.argv[1:]))}
    print(format_table(rows, protocol, meta))
    out_dir = ROOT / ("bench/results" if args.quick else "docs")
    from noisystudent.io import write_json

    write_json(out_dir / f"bench-{tag}.json", {"meta": meta, "rows": rows, "runs": results})
    print(f"wrote {out_dir / f'bench-{tag}.json'} and {figure(rows, protocol, out_dir / f'bench-{tag}.png')}")


if __name__ == "__main__":
    main()
