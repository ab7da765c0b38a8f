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
    if ray.available_resources().get("CPU", 0) >= total:
        return
    gc.collect()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= total:
            return
        time.sleep(0.5)
    held = total - ray.available_resources().get("CPU", 0)
    pytest.fail(f"{request.node.nodeid} left {held:g} of the session's {total:g} Ray CPUs reserved 30 s after it "
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
