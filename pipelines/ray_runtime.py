"""Start Ray locally, or connect to a cluster when given an address. Never a scheduler of our own."""

from __future__ import annotations

import os
from typing import Optional

from noisystudent.errors import UserError


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, quiet: bool = False) -> dict:
    """Make sure Ray is up; return its cluster resources.

    ``address=None`` starts an embedded local instance (no dashboard). ``address="auto"`` or
    ``"ray://host:10001"`` / ``"host:6379"`` connects to an existing cluster. A second call reuses the
    running instance. Worker output (per-epoch lines of Ray Train workers) reaches the driver unless
    ``quiet``.
    """
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if not ray.is_initialized():
        kwargs: dict = {"include_dashboard": False, "configure_logging": True, "logging_level": "WARNING"}
        if quiet:
            kwargs["log_to_driver"] = False
        try:
            if address:
                ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
            else:
                # no dashboard, hence no State API: see quiet_worker_logs
                ray.init(num_cpus=num_cpus, runtime_env={"worker_process_setup_hook": "pipelines.ray_runtime.quiet_worker_logs"},
                         **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local instance"
            raise UserError(f"cannot start or reach Ray at {where}: {str(exc).splitlines()[0]}") from None
    return ray.cluster_resources()


# Ray Train v2's detached PlacementGroupCleaner asks the State API every second whether the train
# controller is alive. The State API is served by the dashboard, which the embedded instance does not
# start (it needs ray[default]'s aiohttp/grpc stack and a process of its own), so the cleaner logs a
# warning every second of every training job: 2,301 of the 2,723 lines of a `make bench-accuracy` log.
# It cannot do its job there anyway (its job is releasing a dead controller's placement group, which
# the local instance does when the driver exits), so the embedded instance silences that one logger.
# A cluster given by --ray-address keeps its dashboard and this warning.
_PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_worker_logs() -> None:
    """``worker_process_setup_hook`` of the embedded Ray instance (runs in every worker process)."""
    import logging

    logging.getLogger(_PG_CLEANER_LOGGER).setLevel(logging.ERROR)
