"""The few calls of Orthanc's REST API a watcher needs (https://orthanc.uclouvain.be/api/).

Orthanc is the open-source PACS hospitals and research groups put in front of, or beside, their
clinical archive: it takes images over DICOM or DICOMweb and announces each series on its change
feed once it is stable (no new image for ``StableAge`` seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

STABLE_SERIES = "StableSeries"


class PacsError(RuntimeError):
    """The PACS could not be reached or answered with an error; the message says which call."""


@dataclass(frozen=True)
class Change:
    seq: int
    kind: str  # Orthanc's ChangeType, e.g. StableSeries
    resource: str  # the Orthanc ID of the series, study, ... it is about


class Orthanc:
    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout_s: float = 60) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.http = requests.Session()
        self.http.auth = auth

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.http.request(method, f"{self.url}{path}", timeout=self.timeout_s, **kwargs)
        except requests.RequestException as err:
            raise PacsError(f"the PACS at {self.url} is unreachable ({type(err).__name__})") from None
        if response.status_code >= 400:
            raise PacsError(f"the PACS answered {method} {path.split('?')[0]} with HTTP {response.status_code}")
        return response

    def changes(self, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        """The changes after ``since``: (changes, the last one's number, whether the feed is drained)."""
        feed = self.call("GET", f"/changes?since={since}&limit={limit}").json()
        changes = [Change(int(c["Seq"]), c["ChangeType"], c["ID"]) for c in feed["Changes"]]
        return changes, int(feed["Last"]), bool(feed["Done"])

    def last_change(self) -> int:
        return int(self.call("GET", "/changes?last").json()["Last"])

    def series(self, series_id: str) -> dict:
        """The series' record: its main DICOM tags (Modality, BodyPartExamined, ...) and study."""
        return self.call("GET", f"/series/{series_id}").json()

    def study_series(self, study_id: str) -> list[dict]:
        return self.call("GET", f"/studies/{study_id}/series").json()

    def first_instance_tags(self, series_id: str) -> dict:
        instances = self.call("GET", f"/series/{series_id}/instances").json()
        return self.call("GET", f"/instances/{instances[0]['ID']}/tags?simplify").json() if instances else {}

    def archive(self, series_id: str) -> bytes:
        """The series' files as one zip."""
        return self.call("GET", f"/series/{series_id}/archive").content

    def store(self, dicom: bytes) -> str:
        """Stores one DICOM file; its Orthanc instance ID."""
        return self.call("POST", "/instances", data=dicom, headers={"Content-Type": "application/dicom"}).json()["ID"]
