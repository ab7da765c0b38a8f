"""Shared fixtures: one real local Ray instance per test session, small real data sets."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np
import pytest

FMNIST_ROOT = Path(os.environ.get("NOISYSTUDENT_FMNIST", "/usr/share/datasets/fashion-mnist"))

# The suite's Ray instance keeps Ray's token authentication on, as the product does (never disabled).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long or browser tests (deselect with -m 'not slow')")


# `make test` runs the files on 2 pytest-xdist workers (`-n 2 --dist loadfile`: a file's tests stay together,
# so its module fixtures are built once). A worker takes files in collection order, so the files with the
# longest real-Ray jobs (`--durations`, 2026-12-07) go first and the many quick files fill in around them;
# in name order the 78 s two-worker Ray Train fixture started last and ran alone at the end.
FIRST = ("test_distributed.py", "test_study.py", "test_distill.py", "test_labeling.py", "test_cli.py",
         "test_report.py", "test_scale.py", "test_security.py", "test_anomaly.py", "test_pipeline.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: test order inside a file kept


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op torch thread for the in-process training and inference of the whole session: on 2 busy
    cores, two threads spend most of their time in OpenMP barriers (a 60-step teacher took 69 s instead of
    3; 20x measured); restored afterwards. Ray workers get theirs from ``ray.torch_threads``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray instance shared by every test of the session (starting one costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _ray_cpus_released(request):
    """After a test on the session's Ray instance, make sure it gave back every CPU it reserved.

    A failed Ray Data job can keep its actor pool (and the CPUs it reserved) alive: until the cycle
    through its exception's traceback is collected, or for good when Ray Data's executor is still
    referenced. A later two-worker Ray Train job then waits forever for a CPU that never comes (CI hung on
    it for 90 minutes). So: collect garbage, wait a little for the actors to exit, and otherwise fail
    *this* test, naming it, instead of hanging a later one."""
    yield
    if "ray_session" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)

    def held() -> float:
        return total - ray.available_resources().get("CPU", 0)

    if held() <= 0:
        return
    gc.collect()
    deadline = time.monotonic() + 30
    while held() > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    if held() <= 0:
        return
    pytest.fail(f"{request.node.nodeid} left {held():g} of the session's {total:g} Ray CPUs reserved 30 s after it "
                "ended (an actor pool or task still alive): later multi-worker jobs would wait for them forever")


@pytest.fixture(scope="session")
def fmnist_available() -> bool:
    return (FMNIST_ROOT / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture(scope="session")
def require_fmnist(fmnist_available):
    if not fmnist_available:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FMNIST_ROOT


def write_png_folder(root: Path, n_per_class: dict[str, int], size: int = 16, mode: str = "L", seed: int = 0) -> Path:
    """Write an ImageFolder tree of small PNGs whose class is visible in the pixels (brightness pattern)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = sorted(n_per_class)
    for ci, cls in enumerate(classes):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n_per_class[cls]):
            arr = rng.integers(0, 40, size=(size, size), dtype=np.uint8)
            arr[:, ci * size // len(classes) : (ci + 1) * size // len(classes)] += 200
            img = Image.fromarray(arr, mode="L").convert(mode)
            img.save(d / f"img_{j:04d}.png")
    return root


# --------------------------------------------------------------------------------------------------
# one finished tiny run, shared by the CLI, pipeline, report, tracking and artifact-check tests


def tiny_run_config(**over) -> dict:
    """The shared run's config: Fashion-MNIST, a ResNet-8 teacher, two generations (ResNet-8 then ResNet-14
    students of 4 steps), in-process training; ``over`` merges into a section (dicts) or replaces a key."""
    d = {
        "name": "tiny",
        "data": {"kind": "fashion_mnist", "labels_per_class": 30, "unlabeled_limit": 600, "test_limit": 500},
        "teacher": {"name": "resnet8"},
        "teacher_train": {"epochs": 3, "batch_size": 50, "lr": 0.05},
        "pseudo_labels": {"num_actors": 1, "batch_size": 200, "threshold": 0.0, "per_class": 0},
        "student": {
            "generations": 2,
            "ratio": 2,
            "ladder": [{"name": "resnet8", "drop_rate": 0.2, "drop_path_rate": 0.1},
                       {"name": "resnet14", "drop_rate": 0.3, "drop_path_rate": 0.1}],
            "train": {"epochs": 1, "batch_size": 50, "lr": 0.05, "steps_per_epoch": 4},
            "promote": "always",  # 4-step students: if_better would (rightly) keep the teacher
        },
        "ray": {"workers": 0},
    }
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, require_fmnist, ray_session):
    """``(run_dir, result)``: a finished two-generation run made once per session by ``noisystudent run`` (real
    teacher training, Ray Data labeling, selection, students, evaluation, TensorBoard events). Read it only;
    a test that changes a run works on :func:`run_copy`."""
    import yaml
    from click.testing import CliRunner

    from noisystudent.cli import main

    tmp = tmp_path_factory.mktemp("finished")
    cfg_file = tmp / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_run_config()))
    res = CliRunner().invoke(main, ["run", str(cfg_file), "--run-dir", str(tmp / "run"), "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return tmp / "run", res


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the shared finished run, for a test that changes or damages it; left out are the
    outputs derived from the rest (report, TensorBoard events, an MLflow store)."""
    import shutil

    return Path(shutil.copytree(finished_run[0], tmp_path / "run",
                                ignore=shutil.ignore_patterns("report", "tensorboard", "mlruns")))


# --------------------------------------------------------------------------------------------------
# one trained Fashion-MNIST teacher for the distillation tests (test_distill and the method modules)

DISTILL_DATA = {"kind": "fashion_mnist", "labels_per_class": 30, "unlabeled_limit": 300, "test_limit": 300}


def distill_config(**over):
    """The distillation tests' config: a ResNet-8 teacher, a noised ResNet-8 student of 6-step epochs."""
    from pipelines.config import config_from_dict

    base = {
        "data": dict(DISTILL_DATA),
        "teacher": {"name": "resnet8", "noise": {"randaugment_n": 0}},
        "teacher_train": {"epochs": 4, "batch_size": 50, "lr": 0.05},
        "student": {"ladder": [{"name": "resnet8", "noise": {"randaugment_n": 1, "randaugment_m": 5}}],
                    "train": {"epochs": 3, "batch_size": 30, "lr": 0.05, "steps_per_epoch": 6,
                                                       "eval_every": 100}, "ratio": 1},
        "ray": {"workers": 0},
    }
    base.update(over)
    return config_from_dict(base)


@pytest.fixture(scope="session")
def distill_world(tmp_path_factory, require_fmnist):
    """``(cfg, data, teacher_ckpt, pseudo)``: real Fashion-MNIST subsets, a ResNet-8 teacher trained for a few
    epochs once per session, and its probabilities on the unlabeled images (as the labeling job stores them)."""
    from noisystudent.checkpoint import load_checkpoint
    from noisystudent.data import create_data
    from noisystudent.engine import PseudoLabeledSet, TrainJob, run_training, spec_for
    from noisystudent.evaluate import predict_probs
    from noisystudent.transforms import create_transform

    cfg = distill_config()
    data = create_data(cfg.data)
    out = tmp_path_factory.mktemp("teacher")
    job = TrainJob(spec=spec_for(cfg.teacher, cfg.data, data.classes), model_cfg=cfg.teacher, train_cfg=cfg.teacher_train,
                   labeled=data.labeled, test=data.test, out_dir=out, progress=False)
    run_training(job)
    teacher = load_checkpoint(out)
    s = teacher.spec
    idx, probs = predict_probs(teacher.build_model(), data.unlabeled, create_transform(s.image_size, s.in_chans, s.mean, s.std, None),
                               progress=False)
    pseudo = PseudoLabeledSet(data.unlabeled.subset(idx), probs.astype(np.float32), np.ones(len(probs), dtype=np.int64))
    return cfg, data, out / "model.pt", pseudo
