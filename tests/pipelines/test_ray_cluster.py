"""Ray sessions start where they should: a local instance unless RAY_ADDRESS names a cluster."""

from pathlib import Path

import pytest
import ray
from ray._common.utils import get_ray_address_file, get_system_memory

from pipelines.ray_cluster import ray_session

pytestmark = pytest.mark.slow


@pytest.fixture()
def stale_cluster_record(monkeypatch):
    """The record `ray start` leaves in /tmp/ray naming a head that is gone (a cluster killed
    rather than stopped); the machine's own record, if any, is put back afterwards."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    record = Path(get_ray_address_file(None))
    saved = record.read_text() if record.exists() else None
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("192.0.2.1:6379")  # TEST-NET-1: nothing answers there
    yield
    if saved is None:
        record.unlink(missing_ok=True)
    else:
        record.write_text(saved)


@pytest.mark.timeout(180)
def test_a_stale_ray_start_record_does_not_capture_the_session(stale_cluster_record):
    with ray_session():
        assert ray.cluster_resources().get("CPU", 0) >= 1
        assert not ray.get_runtime_context().gcs_address.startswith("192.0.2.1")
    assert not ray.is_initialized()


@pytest.mark.timeout(180)
def test_what_a_full_object_store_cannot_hold_goes_only_where_it_is_told(tmp_path, monkeypatch):
    """The endpoint's scans cross Ray's object store: past its capacity they land in the folder
    given (serve.spill_directory, or shared memory), not in Ray's temporary folder on disk."""
    import numpy as np
    import ray._private.ray_constants as ray_constants

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_constants, "DEFAULT_OBJECT_STORE_MEMORY_PROPORTION", 200 * 2**20 / get_system_memory())
    with ray_session(tmp_path / "spill"):
        store = ray.available_resources()["object_store_memory"]
        scans = [ray.put(np.full(40 * 2**20 // 4, i, np.float32)) for i in range(int(store // (40 * 2**20)) + 3)]
        assert ray.get(scans[0])[0] == 0
        assert any((tmp_path / "spill").rglob("ray_spilled_objects*")), "nothing spilled where it was told"


def test_the_endpoint_spills_to_shared_memory_unless_told_otherwise(tmp_path):
    from serving.run import SHARED_MEMORY, spill_folder

    with spill_folder(None) as folder:
        assert folder.parent == SHARED_MEMORY and folder.is_dir()
    assert not folder.exists()
    with spill_folder(tmp_path) as folder:
        assert folder == tmp_path
