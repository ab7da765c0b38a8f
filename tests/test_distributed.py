"""Ray Train: 2 gloo workers match training in one process; a worker failure resumes from its checkpoint."""

from __future__ import annotations

import pandas as pd
import pytest

from noisystudent.data import create_data
from noisystudent.engine import TrainJob, spec_for
from pipelines.config import RayConfig, config_from_dict
from pipelines.train_ray import train


def job_for(tmp, epochs=5, steps=None):
    cfg = config_from_dict({
        "data": {"kind": "fashion_mnist", "labels_per_class": 40, "unlabeled_limit": 100, "test_limit": 1000},
        "teacher": {"name": "resnet8", "noise": {"randaugment_n": 1, "randaugment_m": 5}},
        "teacher_train": {"epochs": epochs, "batch_size": 40, "lr": 0.05, "steps_per_epoch": steps},
    })
    data = create_data(cfg.data)
    return TrainJob(spec=spec_for(cfg.teacher, cfg.data, data.classes), model_cfg=cfg.teacher, train_cfg=cfg.teacher_train,
                    labeled=data.labeled, test=data.test, out_dir=tmp, progress=False)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, require_fmnist, ray_session):
    """The job trained in this process, and on two Ray Train workers whose first attempt fails after epoch 1
    and resumes (max_failures 1).

    The same 10 optimizer steps an epoch: 2 workers take twice the images a step (each its own 40)."""
    one = train(job_for(tmp_path_factory.mktemp("w1"), steps=10), RayConfig(workers=0))
    two_dir = tmp_path_factory.mktemp("w2")
    two = train(job_for(two_dir, steps=10), RayConfig(workers=2, max_failures=1), fail_at_epoch=1)
    return one, two, two_dir


def test_two_gloo_workers_reach_the_accuracy_of_one(one_and_two):
    """At equal steps, 2 workers (disjoint shares, gradients averaged) learn at least as well as one, a
    failure and resume included.

    Measured, seeds 0-2: one worker 0.542-0.550, two 0.602-0.624. (Equal *epochs* are no test: two
    workers then take half the steps, and 25 steps give 0.30-0.41 against 0.49-0.54, seed by seed.)"""
    one, two, _ = one_and_two
    assert one["test_acc"] > 0.35 and two["test_acc"] > 0.35, (one["test_acc"], two["test_acc"])
    assert two["test_acc"] > one["test_acc"] - 0.05, (one["test_acc"], two["test_acc"])


def test_worker_failure_resumes_from_last_checkpoint(one_and_two):
    """The two workers' epoch 2 failed: Ray Train restarted the group, which resumed after epoch 1 (not
    restarted, nothing duplicated) and split every epoch between the two."""
    _one, _two, two_dir = one_and_two
    assert (two_dir / ".failed-once-1").exists(), "the failure was injected"
    hist = pd.read_csv(two_dir / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5], "resumed after epoch 1, not restarted or duplicated"
    assert (two_dir / "model.pt").is_file() and not (two_dir / "last.pt").exists()


def test_failure_beyond_max_failures_is_raised(tmp_path, require_fmnist, ray_session):
    """One Ray Train worker (the default) fails in its first epoch with no failure allowed: the error reaches
    the caller."""
    job = job_for(tmp_path, epochs=1, steps=1)
    with pytest.raises(Exception, match="injected failure"):
        train(job, RayConfig(workers=1, max_failures=0), fail_at_epoch=0)


@pytest.mark.slow  # a Ray Train job to the end on one worker. Fast: the Ray Train path to the end on two workers
# (test_two_gloo_workers_reach_the_accuracy_of_one), one worker's failure reaching the caller
# (test_failure_beyond_max_failures_is_raised), the same job in this process (one_and_two)
def test_one_ray_train_worker_trains_to_the_end(tmp_path, one_and_two, ray_session):
    one = train(job_for(tmp_path, steps=10), RayConfig(workers=1))
    assert one["test_acc"] > 0.35 and one["test_acc"] > one_and_two[0]["test_acc"] - 0.05, one["test_acc"]
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2, 3, 4, 5]
    assert (tmp_path / "model.pt").is_file() and not (tmp_path / "last.pt").exists()


def test_ray_train_info_lines_are_kept_off_the_console():
    """Ray Train v2's per-epoch INFO records (some from loggers named by file path) are dropped from the
    console; its warnings and everyone else's records pass."""
    import logging
    import os

    import ray.train

    from pipelines.train_ray import _QuietRayTrainInfo

    ray_file = os.path.join(os.path.dirname(ray.train.__file__), "v2", "_internal", "execution", "context.py")
    quiet = _QuietRayTrainInfo()

    def record(name, level, path):
        return logging.LogRecord(name, level, path, 1, "Reporting training result 3", None, None)

    assert not quiet.filter(record(ray_file, logging.INFO, ray_file))
    assert not quiet.filter(record("ray.train.v2._internal.execution.storage", logging.INFO, ray_file))
    assert quiet.filter(record(ray_file, logging.WARNING, ray_file))
    assert quiet.filter(record("noisystudent", logging.INFO, "/work/noisystudent/train.py"))


def test_embedded_ray_quiets_the_placement_group_cleaner_in_its_workers(tmp_path):
    """init_ray's embedded instance runs quiet_worker_logs in every worker process: the
    PlacementGroupCleaner's logger (a warning a second without a dashboard) and the autoscaling
    coordinator client's (a traceback whenever a 5 s call times out on a busy machine) pass only errors
    there, even after Ray Train's controller reconfigures ``ray.train`` with dictConfig (which resets the
    levels of existing child loggers: a level alone was undone that way); a sibling logger is untouched.
    A fresh process, since the session's Ray instance is not started by init_ray."""
    import json
    import subprocess
    import sys

    script = """
import json, logging, logging.config, ray
from pipelines.ray_runtime import init_ray, QUIETED_LOGGERS
init_ray(num_cpus=1, quiet=True)

@ray.remote(num_cpus=0)
def passed():
    # what Ray Train's controller does after the setup hook ran
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                               "loggers": {"ray.train": {"level": "INFO"}}})
    names = list(QUIETED_LOGGERS) + ["ray.train.v2._internal.execution.controller"]
    out = {}
    for name in names:
        lg = logging.getLogger(name)
        out[name] = [bool(lg.isEnabledFor(lv) and lg.filter(lg.makeRecord(name, lv, "f", 1, "m", None, None)))
                     for lv in (logging.WARNING, logging.ERROR)]
    return out

print(json.dumps(ray.get(passed.remote())))
ray.shutdown()
"""
    # cwd outside the checkout: the hook must import from the installed package, as on a cluster node
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    from pipelines.ray_runtime import QUIETED_LOGGERS

    for name in QUIETED_LOGGERS:
        assert out[name] == [False, True], (name, out)  # warnings dropped, errors kept
    assert out["ray.train.v2._internal.execution.controller"] == [True, True]
