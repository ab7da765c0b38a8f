"""A refused generation must not repeat identical work (issue 24).

When generation g - 1's student is refused, its teacher labels generation g again. Labeling is a pure
function of the teacher checkpoint and the run's ``pseudo_labels`` section, so the labels of the earlier
generation taught by the same checkpoint are reused (hard links, no second labeling job). If the rung
of generation g is also the same model with the same noise and method, the student would train on the
same labels as before and could not change anything: the loop stops there and says what would move it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Optional

from noisystudent.io import link_folder, read_json

from .config import ExperimentConfig
from .state import RunDir
from .steps import step_name
from .verify import folder_artifacts


def same_teacher_generation(run: RunDir, g: int) -> Optional[int]:
    """The latest generation before ``g`` whose labels were made by the checkpoint that teaches ``g``."""
    teacher = run.teacher_of(g).resolve()
    for h in range(g - 1, 0, -1):
        if run.is_done(step_name(h, "label")) and run.teacher_of(h).resolve() == teacher:
            return h
    return None


def repeated_generation(run: RunDir, cfg: ExperimentConfig, g: int) -> Optional[int]:
    """The earlier generation whose student ``g`` would train again (same teacher, labels, rung), or None."""
    h = same_teacher_generation(run, g)
    if h is None or not run.is_done(step_name(h, "student")):
        return None
    a, b = cfg.student_model(g), cfg.student_model(h)
    return h if dataclasses.asdict(a) == dataclasses.asdict(b) else None


def reuse_labels(run: RunDir, g: int, h: int) -> bool:
    """Give generation ``g`` the labels of generation ``h`` (same teacher checkpoint) as hard links (a copy
    where the file system has none), written into a temporary folder renamed into place, and record the
    label step as done with ``reused_from``. False when ``g`` is labeled already."""
    step = step_name(g, "label")
    if run.is_done(step):
        return False
    src, dst = run.labels_dir(h), run.labels_dir(g)
    t0 = time.perf_counter()
    link_folder(src, dst)
    info = run.step_info(step_name(h, "label")) or {}
    summary = read_json(dst / "summary.json") if (dst / "summary.json").is_file() else {}
    run.mark_done(step, time.perf_counter() - t0, folder_artifacts(dst), rows=summary.get("rows", info.get("rows")),
                  rejected=summary.get("rejected", info.get("rejected")), teachers=info.get("teachers"),
                  reused_from=step_name(h, "label"))
    return True


def stop_message(run: RunDir, cfg: ExperimentConfig, g: int, h: int) -> str:
    """One line: why the loop stops before generation ``g`` and what would move it."""
    teacher = os.path.relpath(run.teacher_of(g).parent, run.root)
    rung = cfg.student_model(g)
    return (f"generation {g} would repeat generation {h}: {teacher} labels the same images again and the same "
            f"{rung.name} rung (same noise and method) would train on the same labels; the loop stops here. Give "
            f"generation {g} another rung (student.ladder: a larger model, more noise or steps), or set "
            f"student.promote: always")
