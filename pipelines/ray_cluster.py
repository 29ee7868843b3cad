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
    ray.init(address=address, logging_level=logging.WARNING)
    log.info("Ray: %s", address or f"local, {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
    try:
        yield
    finally:
        ray.shutdown()
