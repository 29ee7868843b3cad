"""Ray sessions start where they should: a local instance unless RAY_ADDRESS names a cluster."""

from pathlib import Path

import pytest
import ray
from ray._common.utils import get_ray_address_file

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
