"""Which model teaches the next generation: the promotion decision, and what it rested on.

``student.promote``:

- ``always``: the student of generation g teaches generation g + 1 (the paper's loop).
- ``if_better`` (default): the student teaches only when its accuracy on the *validation* images is at
  least its teacher's (a tie goes to the student); otherwise the teacher of g teaches g + 1 again. The
  worse student is kept in ``gen-g/student/`` and reported; it just does not label anything.

Decisions look at validation only, never at test accuracy, which stays a report. Validation is
``data.val`` or ``data.val_fraction`` of the labeled images (see :func:`noisystudent.data.split_validation`);
with very few labels it is small (10 labels a class and the defaults: 2 a class, 20 images, so one image
is 5 points), and the decision says how many images it compared on. Without validation images (no split
could be made) ``if_better`` has nothing to compare and promotes the student, saying so.

Pure functions of plain values: the step in :mod:`pipelines.steps` reads the figures and records the result.
"""

from __future__ import annotations

from typing import Optional

# a teacher whose validation accuracy is below this multiple of chance (1 / classes) is "near chance"
NEAR_CHANCE = 2.0


def near_chance(acc: Optional[float], num_classes: int) -> bool:
    """True when ``acc`` is below ``NEAR_CHANCE`` times chance (0.2 with 10 classes)."""
    return acc is not None and num_classes > 1 and acc < NEAR_CHANCE / num_classes


def decide(policy: str, g: int, student_val: Optional[float], teacher_val: Optional[float], val_images: int,
           teacher_name: str) -> dict:
    """The promotion record of generation ``g``.

    ``teacher_name`` says which model taught ``g`` (e.g. ``generation 0 teacher``). Returns ``promoted``
    (``student`` or ``teacher``: the model that teaches ``g + 1``), ``signal`` (``validation`` or ``none``),
    the two validation accuracies, ``val_images`` and ``reason``, one sentence a person reads in
    ``noisystudent status`` and the report."""
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
    return {**rec, "promoted": "teacher",
            "reason": f"student {student_val:.4f} < {teacher_name} {teacher_val:.4f} {on}: the {teacher_name} "
                      f"teaches generation {g + 1} again (the student is kept in gen-{g}/student)"}
