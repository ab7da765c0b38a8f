"""Loop trials (``kind: loop``): each teacher labels once, and every trial's run folder starts from it."""

from __future__ import annotations

from pathlib import Path

from noisystudent.io import link_folder, read_json

from ..state import RunDir
from ..steps import step_name
from .spec import LOOP_STEP, TEACHER_STEP, TRIAL_STEP


def label_once(teacher_dir: Path, quiet: bool = True) -> None:
    """Generation 1's labels in the teacher's run folder (``gen-1/labels``), made once for every loop trial."""
    from .. import steps

    run = RunDir(teacher_dir)
    if not run.is_done(LOOP_STEP):
        steps.label(run, run.load_config(), 1, progress=not quiet)


def seed_loop_trial(teacher_dir: Path, run: RunDir) -> None:
    """Start a loop trial's run folder from the teacher's: its model and generation-1 labels (hard links, a
    copy where there are none) with their state entries. The trial's own config freezes on its first step."""
    if run.is_done(LOOP_STEP):
        return
    src = RunDir(teacher_dir)
    for folder in (src.teacher_dir(), src.labels_dir(1)):  # the model, not a leftover last.pt
        link_folder(folder, run.root / folder.relative_to(src.root),
                    keep=lambda f: not f.name.endswith(".pt") or f.name == "model.pt")
    st = run.state()
    for step in (TEACHER_STEP, LOOP_STEP):
        st.setdefault("steps", {})[step] = {**src.step_info(step), "seeded_from": str(src.root)}
    run._write_state(st)


def trial_done(run: RunDir, kind: str, cfg: dict) -> bool:
    if kind == "loop":
        n = int(cfg["student"]["generations"])
        return run.state_path.is_file() and (n == 0 or run.is_done(step_name(n, "promote")) or "stopped" in run.state())
    return run.is_done(TRIAL_STEP)


def loop_result(run: RunDir) -> dict:
    """A loop trial's figures: the last finished generation's test/validation accuracy and fidelity, every
    generation's test accuracy (``gen<g>_test_acc``), the teacher's, and how many students were promoted."""
    from ..loop import status_rows

    rows = [r for r in status_rows(run) if isinstance(r["generation"], int)]
    done = [r for r in rows if r["test_acc"] is not None]
    last = done[-1]
    m = read_json(run.model_dir(last["generation"]) / "metrics.json")
    out = {"test_acc": last["test_acc"], "val_acc": last.get("val_acc"), "fidelity": m.get("test_fidelity"),
           "teacher_test_acc": rows[0]["test_acc"], "generations_done": last["generation"],
           "promoted": sum(r.get("promoted") == "student" for r in rows[1:])}
    out.update({f"gen{r['generation']}_test_acc": r["test_acc"] for r in done})
    return out
