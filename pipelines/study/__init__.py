"""Studies: a grid of config overrides run as Ray Tune trials, each an ordinary distillation job.

A study file (YAML)::

    base: distill.yaml            # an experiment config: a path (relative to the study file) or a mapping
    set: {student.train.epochs: 2}  # optional: dotted fields every trial changes in the base
    grid:                         # every combination is a trial; keys are dotted config fields
      distill.method.name: [supervised, hinton]
      data.label_noise.rate: [0.0, 0.4]
      seed: [0, 1]
    variants:                     # optional: rows that each change a few fields (one factor at a time),
      - {student.ratio: 1}        # crossed with the grid (e.g. seeds); the base itself is a row too
      - {pseudo_labels.threshold: 0.0, pseudo_labels.per_class: null}
    random:                       # optional: num_samples draws of one value per field, seeded
      num_samples: 2
      seed: 0
      choices: {student.train.lr: [0.05, 0.1]}
    resources: {cpu: 1, gpu: 0}   # per trial; trials run in parallel up to what the cluster has
    max_concurrent: null          # cap on parallel trials (null: as many as resources allow)
    max_failures: 1               # retries of a failed trial before it is listed as failed
    teacher: null                 # a checkpoint every trial distills from; null: one teacher per data condition
    kind: distill                 # distill: a trial is one distillation job; loop: a trial is the Noisy Student
                                  # loop (student.generations generations) from its data condition's teacher

The study folder::

    DIR/study.json                the study as run (grid, trials and their overrides)
    DIR/teachers/<key>/           one run folder per data condition (``noisystudent teacher``'s step)
    DIR/trials/<id>/              one run folder per trial (``noisystudent distill``'s step)
    DIR/tune/                     Ray Tune's experiment folders (logs; not needed to resume)
    DIR/results.parquet           one row per trial; DIR/errors.json the trials that failed
    DIR/report/index.html         summary over seeds (best in bold), heatmap.png, failed trials

``kind: loop`` studies the loop's own ingredients (threshold, balancing, ratio, soft/hard, the rung's
method and init, steps): the teacher of each data condition labels its unlabeled images once, in the
driver, and every trial starts from a run folder holding that teacher and those generation-1 labels
(hard links), then runs select -> student -> evaluate -> promote for each generation as ``noisystudent
run`` does (later generations label inside the trial, which needs a CPU left beside the trial's own:
``pseudo_labels.num_actors: 1`` and ``max_concurrent: 1`` on 2 cores). Fields the labeling job reads
(``pseudo_labels.temperature``, ``topk``) cannot vary across the trials of one teacher.

Each ``distill`` trial is the ``distill`` step (:func:`pipelines.steps.distill`) on its own run folder, trained
in-process inside its Tune trial (``ray.workers: 0``: a trial is one Tune actor holding ``resources``;
it does not start Ray Train workers). Run folders are the source of truth: a trial whose folder says
done is not scheduled again, an unfinished one resumes from its ``last.pt``. So a killed study is
resumed by running the same command again; Tune's own experiment restore is not needed.

Setting ``<...>.method.name`` to another method drops the base method's parameters (they belong to the
old method); give ``<...>.method`` a mapping to set parameters too. List elements are addressed by index
(``student.ladder.0.name``).

The package, by concern::

    spec.py         the study file: read, validate, expand into trials (load_study, set_dotted, teacher_key)
    runner.py       run_study on Ray Tune: the teacher stage, the trials, the Tune trainable
    loop_trials.py  kind: loop: label once per teacher, seed each trial's run folder, a trial's figures
    results.py      one row per trial (collect, results.parquet), the summary over seeds, status
    report.py       DIR/report/index.html and heatmap.png
"""

from __future__ import annotations

from .loop_trials import label_once, loop_result, seed_loop_trial, trial_done
from .report import write_report
from .results import collect, format_summary, status, summary
from .runner import run_study
from .spec import (DATA_PATH_FIELDS, LABEL_FIELDS, LOOP_STEP, STUDY_KEYS, TEACHER_STEP, TRIAL_STEP, Study, Trial,
                   load_study, parse_only, select_trials, set_dotted, teacher_key)

__all__ = ["DATA_PATH_FIELDS", "LABEL_FIELDS", "LOOP_STEP", "STUDY_KEYS", "TEACHER_STEP", "TRIAL_STEP", "Study", "Trial",
           "collect", "format_summary", "label_once", "load_study", "loop_result", "parse_only", "run_study",
           "seed_loop_trial", "select_trials", "set_dotted", "status", "summary", "teacher_key", "trial_done", "write_report"]
