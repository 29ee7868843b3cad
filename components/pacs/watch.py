"""Follow a PACS and put an anomaly segmentation beside every new brain MR series.

Each series Orthanc announces as stable is checked (MR; a brain, by its BodyPartExamined),
fetched as a zip, posted to the endpoint with ``?map=dicom-seg``, and the DICOM Segmentation it
returns is stored back into the PACS, where it joins the source's study. The position in the
change feed is kept in a state file after every change, and a series whose study already holds
a segmentation of it (made by this software) is not scored again: a restart, even one that lost
its state file, scores no series twice. While the endpoint or the PACS is down the watcher
waits and retries from the same change; a series the endpoint refuses (broken, not a volume) is
skipped with the endpoint's reason. Logs name series by their PACS ID and series number, never by a
patient's name, identifiers or free text.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import requests

from components.atomic import atomic_path
from components.data.dicom_io import SOFTWARE
from components.pacs.orthanc import STABLE_SERIES, Orthanc, PacsError

log = logging.getLogger("brainomaly.pacs")


@dataclass(frozen=True)
class WatchSettings:
    """params.yaml's ``pacs`` section."""

    url: str = "http://127.0.0.1:8042"  # the PACS (Orthanc's REST API)
    endpoint: str | None = None  # the scoring endpoint; None: serve.host and serve.port
    body_parts: tuple[str, ...] = ("BRAIN", "HEAD")  # BodyPartExamined values scored; "" admits none given
    site: str | None = None  # score at this site's calibration (the endpoint's ?site=)
    poll_s: float = 5.0  # how often the change feed is read once drained
    state_file: Path = Path("pacs-watch.json")  # where in the feed the watcher is
    from_start: bool = False  # a first start scores the series already in the PACS too
    timeout_s: float = 300.0  # for one series: its download, its scoring, the SEG's upload


class Outcome(NamedTuple):
    series: str  # the PACS's ID of the series
    status: Literal["scored", "skipped", "done before"]
    detail: str  # the verdict, or why it was skipped


class EndpointUnavailable(RuntimeError):
    """The endpoint could not score now (down, busy, starting): the same series is tried again."""


class WatchError(RuntimeError):
    """A setting is wrong (the endpoint refuses the key): retrying would not help."""


class Watcher:
    def __init__(self, pacs: Orthanc, settings: WatchSettings, endpoint: str, state_path: Path,
                 api_key: str | None = None) -> None:
        self.pacs, self.settings, self.endpoint, self.state_path = pacs, settings, endpoint.rstrip("/"), state_path
        self.http = requests.Session()
        self.http.headers.update({"X-API-Key": api_key} if api_key else {})

    def run(self, stop: threading.Event | None = None, once: bool = False) -> list[Outcome]:
        """Follow the change feed until ``stop`` is set (or, ``once``, until it is drained); the
        outcome of every series handled."""
        stop = stop or threading.Event()
        since, outcomes = None, []
        while not stop.is_set():
            try:
                since = self.position() if since is None else since
                since, drained = self.follow(since, outcomes, stop)
            except (EndpointUnavailable, PacsError) as err:  # down for a while: restarting, say
                if once:
                    raise
                log.warning("%s; trying again in %g s", err, self.settings.poll_s)
                stop.wait(self.settings.poll_s)
                continue
            if drained:
                if once:
                    break
                stop.wait(self.settings.poll_s)
        return outcomes

    def follow(self, since: int, outcomes: list[Outcome], stop: threading.Event) -> tuple[int, bool]:
        """One page of the feed handled, the position saved after each change."""
        changes, last, drained = self.pacs.changes(since)
        for change in changes:
            if stop.is_set():
                return since, False
            if change.kind == STABLE_SERIES:
                outcome = self.handle(change.resource)
                log.info("series %s: %s (%s)", outcome.series, outcome.status, outcome.detail)
                outcomes.append(outcome)
            since = change.seq
            self.save(since)
        if not changes and last > since:  # the feed was cleared past us
            since = last
            self.save(since)
        return since, drained

    def handle(self, series_id: str) -> Outcome:
        record = self.pacs.series(series_id)
        tags = record.get("MainDicomTags", {})
        label = f"{series_id} (series {tags.get('SeriesNumber', '?')})"
        modality, body_part = tags.get("Modality", ""), tags.get("BodyPartExamined", "").upper()
        if modality != "MR":
            return Outcome(label, "skipped", f"modality {modality or 'missing'}, not MR")
        if body_part not in self.settings.body_parts:
            return Outcome(label, "skipped", f"body part {body_part or 'not given'}, not one of pacs.body_parts "
                                             f"({', '.join(p or repr(p) for p in self.settings.body_parts)})")
        if self.segmented_before(record):
            return Outcome(label, "done before", "its study holds a segmentation of it")
        response = self.score(self.pacs.archive(series_id))
        if response.status_code != 200:
            return Outcome(label, "skipped", f"the endpoint refused it: {_error(response)}")
        self.pacs.store(response.content)
        return Outcome(label, "scored", response.headers.get("X-Volume-Verdict", "?"))

    def segmented_before(self, record: dict) -> bool:
        uid = record["MainDicomTags"].get("SeriesInstanceUID")
        for series in self.pacs.study_series(record["ParentStudy"]):
            tags = series.get("MainDicomTags", {})
            if tags.get("Modality") == "SEG" and tags.get("Manufacturer") == SOFTWARE:
                referenced = self.pacs.first_instance_tags(series["ID"]).get("ReferencedSeriesSequence") or [{}]
                if referenced[0].get("SeriesInstanceUID") == uid:
                    return True
        return False

    def score(self, archive: bytes) -> requests.Response:
        params = {"map": "dicom-seg"} | ({"site": self.settings.site} if self.settings.site else {})
        try:
            response = self.http.post(f"{self.endpoint}/v1/predict", params=params, data=archive,
                                      headers={"Content-Type": "application/zip"}, timeout=self.settings.timeout_s)
        except requests.RequestException as err:
            raise EndpointUnavailable(f"the endpoint at {self.endpoint} is unreachable ({type(err).__name__})") from None
        if response.status_code == 401:
            raise WatchError(f"the endpoint at {self.endpoint} refused the API key: set BRAINOMALY_API_KEY to its key")
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise EndpointUnavailable(f"the endpoint answered HTTP {response.status_code}: {_error(response)}")
        return response

    def position(self) -> int:
        """Where the last run stopped; on a first start, the feed's end (or its start, ``from_start``)."""
        if self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text())
                if state.get("pacs") == self.pacs.url:
                    return int(state["since"])
                log.warning("%s follows another PACS (%s): starting afresh", self.state_path, state.get("pacs"))
            except (ValueError, KeyError, TypeError):
                log.warning("%s is unreadable: starting afresh (no series is scored twice)", self.state_path)
        return 0 if self.settings.from_start else self.pacs.last_change()

    def save(self, since: int) -> None:
        with atomic_path(self.state_path) as tmp:
            tmp.write_text(json.dumps({"pacs": self.pacs.url, "since": since}))


def _error(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text[:200]))
    except ValueError:
        return response.text[:200]
