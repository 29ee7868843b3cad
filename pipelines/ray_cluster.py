"""Connect to Ray: the cluster named by ``RAY_ADDRESS`` if set, else a local one on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import ray

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Initialise Ray for the duration of a stage; shut it down only if this stage started it."""
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    # "local", not None: Ray would otherwise join the last `ray start` cluster recorded in
    # /tmp/ray, and hang on connecting when that cluster is gone
    ray.init(address=address or "local", logging_level=logging.WARNING)
    log.info("Ray: %s", address or f"local, {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
    try:
        yield
    finally:
        ray.shutdown()


def use_gpu(setting: bool | str) -> bool:
    """train.use_gpu resolved against the connected cluster: ``auto`` means GPUs if it has any
    now (an autoscaling cluster whose GPU nodes are not up yet needs ``true``)."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if setting == "auto":
        return gpus > 0
    if setting and not gpus and not os.environ.get("RAY_ADDRESS"):
        # a local instance never grows GPUs: Ray would wait for one forever
        raise ValueError("train.use_gpu is true but this machine has no GPU Ray can see: set it to auto or false")
    return bool(setting)
