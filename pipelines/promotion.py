"""Which model teaches the next generation: the promotion decision, and what it rested on.

``student.promote``:

- ``always``: the student of generation g teaches generation g + 1 (the paper's loop).
- ``if_better`` (default): the student teaches only when its accuracy on the *validation* images is at
  least its teacher's (a tie goes to the student); otherwise the teacher of g teaches g + 1 again. The
  worse student is kept in ``gen-g/student/`` and reported; it just does not label anything.
  ``student.promote_alpha`` below 1 refuses a student below its teacher only when it is significantly
  worse, by an exact one-sided McNemar test on the same images (the images only the teacher gets right
  against those only the student gets right): the student is the better model unless shown otherwise.

Every refusal records that paired comparison (``teacher_only``, ``student_only``, ``p_value``), so a
person sees how much the decision rested on. Why the strict rule stays the default: on a split of 20
images the evidence for "a student at 0.20 is worse than its 0.45 teacher" (8 images against 3,
p = 0.11) is no stronger than for a student 5 points below on 100 images, and the first is the collapse
this guards against. What the test does not fix is an unrepresentative split: ``make run``'s teacher drew
0.88 on its 100 validation images (0.80 on test) and its students lost 5 and 7 of them while winning
none (p = 0.03 and 0.008), although both beat it on the 10,000 test images; a larger ``data.val_fraction``
or ``data.val`` is the remedy there.

Decisions look at validation only, never at test accuracy, which stays a report. Validation is
``data.val`` or ``data.val_fraction`` of the labeled images (see :func:`noisystudent.data.split_validation`);
with very few labels it is small (10 labels a class and the defaults: 2 a class, 20 images, so one image
is 5 points), and the decision says how many images it compared on. Without validation images (no split
could be made) ``if_better`` has nothing to compare and promotes the student, saying so.

Pure functions of plain values: the step in :mod:`pipelines.steps` reads the figures and records the result.
"""

from __future__ import annotations

import math
from typing import Optional

# a teacher whose validation accuracy is below this multiple of chance (1 / classes) is "near chance"
NEAR_CHANCE = 2.0


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
           teacher_name: str, discordant: Optional[tuple[int, int]] = None, alpha: float = 1.0) -> dict:
    """The promotion record of generation ``g``.

    ``teacher_name`` says which model taught ``g`` (e.g. ``generation 0 teacher``). Returns ``promoted``
    (``student`` or ``teacher``: the model that teaches ``g + 1``), ``signal`` (``validation`` or ``none``),
    the two validation accuracies, ``val_images`` and ``reason``, one sentence a person reads in
    ``noisystudent status`` and the report. ``discordant`` = (images only the teacher got right, images only
    the student got right) on the validation images; with it, a student below its teacher is refused only
    when :func:`mcnemar_p` < ``alpha`` (``p_value`` in the record). Without it every student below is refused."""
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
