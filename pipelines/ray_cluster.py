"""Connect to Ray: the cluster named by ``RAY_ADDRESS`` if set, else a local one on this machine."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import ray

log = logging.getLogger(__name__)
VERBOSE_VARIABLE = "BRAINOMALY_VERBOSE"  # set by `brainomaly --verbose`; Ray's workers inherit it


def spilling_config(spill_to: Path | None) -> dict:
    """Ray's object-spilling settings: objects spilled, and those that overflow a full store,
    go to ``spill_to``; None keeps Ray's default (its temporary folder, on disk)."""
    if spill_to is None:
        return {}
    spec = {"type": "filesystem", "params": {"directory_path": str(Path(spill_to).resolve())}}
    return {"object_spilling_config": json.dumps(spec)}


@contextlib.contextmanager
def ray_session(spill_to: Path | None = None) -> Iterator[None]:
    """Initialise Ray for the duration of a stage; shut it down only if this stage started it.
    ``spill_to`` (see spilling_config) applies to a local instance; a cluster named by
    ``RAY_ADDRESS`` keeps its own. The workers' and actors' output goes to Ray's log files, not
    to this console, unless ``brainomaly --verbose`` (BRAINOMALY_VERBOSE=1) asks for it."""
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and spill_to is not None:
        log.warning("RAY_ADDRESS is set: objects spill where that cluster was told, not to %s", spill_to)
    # "local", not None: Ray would otherwise join the last `ray start` cluster recorded in
    # /tmp/ray, and hang on connecting when that cluster is gone
    verbose = os.environ.get(VERBOSE_VARIABLE) == "1"
    context = ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=verbose,
                       _system_config=None if address else spilling_config(spill_to) or None)
    log.info("Ray: %s", address or f"local, {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset pass
        logs = Path(context.address_info["session_dir"]) / "logs"
        log.info("Ray's worker logs: %s%s (brainomaly --verbose shows them here)", logs, " on the head node" * bool(address))
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
