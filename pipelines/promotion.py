"""Which model teaches the next generation: the promotion decision, and what it rested on.

``student.promote``:

- ``unless_worse`` (default): the student teaches generation g + 1 unless the validation images show it
  worse than its teacher: **significantly** worse (exact one-sided McNemar test on the same images, the
  images only the teacher gets right against those only the student gets right, p < ``promote_alpha``,
  default 0.05) or worse by **more than** ``promote_margin`` in accuracy (default 0.05: a drop that large is
  a collapse however few images show it). The student is the better model unless shown otherwise.
- ``if_better``: the strict rule: the student teaches only when its validation accuracy is at least its
  teacher's (a tie goes to the student); with ``promote_alpha`` below 1 a student below is refused only
  when significantly worse (the rule before ``unless_worse`` existed).
- ``always``: the student of generation g teaches generation g + 1 (the paper's loop).

A refused student is kept in ``gen-g/student/`` and reported; it just does not label anything. Every
decision below the teacher records the paired comparison (``teacher_only``, ``student_only``,
``p_value``), so a person sees how much it rested on.

Why ``unless_worse`` is the default, from measured cases (README, "Promotion"): ``make run``'s students
were 1.8 points better than their teacher on the 10,000 test images but 1-2 points below it on the 100
validation images (3 images lost against 1 won, p = 0.31): the strict rule refused them on one or two
images and the loop stalled. A student trained one step on a small folder (chance level, 20 validation
images, 8 lost against 3 won, p = 0.11) is not significantly worse on so few images, but it is 25 points
below, which the margin refuses. The margin is in accuracy, so on a split of 20 images (one image = 5
points) a single image never decides.

Decisions look at validation only, never at test accuracy, which stays a report. Validation is
``data.val`` or ``data.val_fraction`` of the labeled images (see :func:`noisystudent.data.split_validation`).
Without validation images (no split could be made) nothing can be compared and the student is promoted,
saying so.

Pure functions of plain values: the step in :mod:`pipelines.steps` reads the figures and records the result.
"""

from __future__ import annotations

import math
from typing import Optional

# a teacher whose validation accuracy is below this multiple of chance (1 / classes) is "near chance"
NEAR_CHANCE = 2.0
# what a null student.promote_alpha means for each policy
DEFAULT_ALPHA = {"unless_worse": 0.05, "if_better": 1.0, "always": 1.0}


def resolve_alpha(policy: str, alpha: Optional[float]) -> float:
    """``student.promote_alpha`` as the policy applies it: null is the policy's own (0.05 / 1)."""
    return DEFAULT_ALPHA.get(policy, 1.0) if alpha is None else float(alpha)


def near_chance(acc: Optional[float], num_classes: int) -> bool:
    """True when ``acc`` is below ``NEAR_CHANCE`` times chance (0.2 with 10 classes)."""
    return acc is not None and num_classes > 1 and acc < NEAR_CHANCE / num_classes


def mcnemar_p(teacher_only: int, student_only: int) -> float:
    """One-sided exact McNemar p-value that the student is worse: P(X >= teacher_only) for X ~ Binomial(n, 1/2),
    n the images exactly one of the two models gets right. 1.0 when they never disagree."""
    b, c = int(teacher_only), int(student_only)
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(b, n + 1)) / 2.0 ** n)


def decide(policy: str, g: int, student_val: Optional[float], teacher_val: Optional[float], val_images: int,
           teacher_name: str, discordant: Optional[tuple[int, int]] = None, alpha: Optional[float] = None,
           margin: float = 0.05) -> dict:
    """The promotion record of generation ``g``.

    ``teacher_name`` says which model taught ``g`` (e.g. ``generation 0 teacher``). Returns ``promoted``
    (``student`` or ``teacher``: the model that teaches ``g + 1``), ``signal`` (``validation`` or ``none``),
    the two validation accuracies, ``val_images`` and ``reason``, one sentence a person reads in
    ``noisystudent status`` and the report. ``discordant`` = (images only the teacher got right, images only
    the student got right) on the validation images; with it, a student below its teacher is refused only
    when :func:`mcnemar_p` < ``alpha`` (``p_value`` in the record). Without it every student below is refused.
    ``unless_worse`` also refuses a student more than ``margin`` below (in accuracy) whatever p says."""
    alpha = resolve_alpha(policy, alpha)
    rec = {"generation": g, "policy": policy, "signal": "validation" if val_images and student_val is not None
           and teacher_val is not None else "none", "val_images": int(val_images or 0),
           "student_val_acc": student_val, "teacher_val_acc": teacher_val, "teacher": teacher_name}
    if policy == "always":
        return {**rec, "promoted": "student",
                "reason": f"student.promote is always: the student of generation {g} teaches generation {g + 1}"}
    if rec["signal"] == "none":
        return {**rec, "promoted": "student",
                "reason": f"no validation images to compare on (data.val_fraction gave no split): the student of "
                          f"generation {g} is promoted unchecked"}
    on = f"on {val_images} validation images"
    if student_val >= teacher_val:
        return {**rec, "promoted": "student",
                "reason": f"student {student_val:.4f} >= {teacher_name} {teacher_val:.4f} {on}: the student teaches "
                          f"generation {g + 1}"}
    below = f"student {student_val:.4f} < {teacher_name} {teacher_val:.4f} {on}"
    if policy == "unless_worse" and teacher_val - student_val > margin + 1e-9:
        rec.update(margin=float(margin))
        if discordant is not None:
            b, c = int(discordant[0]), int(discordant[1])
            rec.update(alpha=alpha, teacher_only=b, student_only=c, p_value=mcnemar_p(b, c))
            below += f" ({b} images only the teacher got right against {c} only the student)"
        return {**rec, "promoted": "teacher",
                "reason": f"{below}, more than student.promote_margin {margin:g} below: the {teacher_name} teaches "
                          f"generation {g + 1} again (the student is kept in gen-{g}/student)"}
    if discordant is not None:
        b, c = int(discordant[0]), int(discordant[1])
        p = mcnemar_p(b, c)
        rec.update(alpha=float(alpha), teacher_only=b, student_only=c, p_value=p)
        test = f"{b} images only the teacher got right against {c} only the student, McNemar p = {p:.3f}"
        if p >= alpha:
            return {**rec, "promoted": "student",
                    "reason": f"{below}, not significantly worse ({test} >= student.promote_alpha {alpha:g}): the "
                              f"student teaches generation {g + 1}"}
        below = (f"{below} ({test})" if alpha >= 1 else
                 f"{below}, significantly worse ({test} < student.promote_alpha {alpha:g})")
    return {**rec, "promoted": "teacher",
            "reason": f"{below}: the {teacher_name} teaches generation {g + 1} again (the student is kept in "
                      f"gen-{g}/student)"}
