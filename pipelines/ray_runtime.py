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
                ray.init(num_cpus=num_cpus, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local instance"
            raise UserError(f"cannot start or reach Ray at {where}: {str(exc).splitlines()[0]}") from None
    return ray.cluster_resources()
