"""`check --roundtrip`: prove, on the operator's own account, what exactly-once rests on.

The journal and the look-up (tracker.py, lookup.py) rely on three facts about the real API that no
public source states. This posts a tiny probe run (input and output `{}`) to an application and
reports each as held, violated or "could not tell":

1. **accepted at the maximum lengths**: a run named with `api.max_name_length` characters and
   described with `api.max_description_length` characters, the token line last, is accepted (else
   names or descriptions that the daemon sends may be refused, failing their folders);
2. **listed, description verbatim**: the run appears in the run list within
   `retry.lookup_grace_seconds`, its description as sent (else a run whose POST answer was lost cannot
   be found by its token, and posting again after the grace period can make a duplicate);
3. **newest first**: the run list is ordered by `created_at`, newest first (else the look-up pages
   through the whole list, up to `api.lookup_max_pages`, and is slower; when the application has no
   other run, a second probe is posted a second later so that the order can be told).

The probe runs stay in the application's run history (the API has no way to delete them).
"""

from __future__ import annotations

import enum
import io
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from watcher.cloud.client import NextmvClient
from watcher.cloud.tracker import Limits, description_with_token
from watcher.config import RUN_TOKEN_PREFIX, TOKEN_LINE_LENGTH
from watcher.errors import ApiError, ApplicationNotFound, AuthError, RejectedError, UncertainError
from watcher.runfolder.markers import parse_iso

PROBE_NAME = "nextmv-watcher roundtrip check"
PROBE_DESCRIPTION = "A probe run posted by `nextmv-watcher check --roundtrip`; it can be ignored."
POLL_SECONDS = 1.0          # how often the list is read while waiting for the probe to appear
SECOND_PROBE_SECONDS = 1.0  # the second probe's distance, so that the two creation times differ


class Result(enum.Enum):
    HELD = "held"
    VIOLATED = "violated"
    UNKNOWN = "could not tell"


@dataclass(frozen=True)
class Finding:
    assumption: str
    result: Result
    detail: str

    @property
    def meaning(self) -> str:
        """What a violation means for the operator ("" unless violated)."""
        if self.result is not Result.VIOLATED:
            return ""
        if self.assumption.startswith("accepted"):
            return ("runs with names or descriptions this long are refused, failing their folders: lower "
                    "api.max_name_length / api.max_description_length to what the API accepts")
        if self.assumption.startswith("listed"):
            return ("a run whose POST answer is lost cannot be found by its token, so after "
                    "retry.lookup_grace_seconds it is posted again and may be duplicated; if the run was "
                    "listed late, raise retry.lookup_grace_seconds")
        return ("the look-up cannot stop early: it pages through the whole run list (up to "
                "api.lookup_max_pages) and waits rather than post again when it cannot read it all; "
                "exactly once still holds, look-ups are slower")


@dataclass
class _Probe:
    token: str
    name: str
    description: str
    run_id: str | None = None
    posted_at: float = 0.0


@dataclass
class _Listing:
    found: dict[str, Any] | None = None                         # the probe's item
    first_page: list[float] = field(default_factory=list)       # created_at of page 1, in list order
    complete: bool = True                                       # every page was read


def probe_texts(limits: Limits, token: str) -> tuple[str, str]:
    """The probe's name and description, each exactly at its limit, the token line last."""
    name = PROBE_NAME[:limits.max_name_length].ljust(limits.max_name_length, ".")
    room = limits.max_description_length - TOKEN_LINE_LENGTH
    text = PROBE_DESCRIPTION[:room].ljust(room, ".") if room > 0 else ""
    return name, description_with_token(text, token)


class Roundtrip:
    """One check against one application. `wait(seconds)` sleeps and answers True when cancelled."""

    def __init__(self, client: NextmvClient, limits: Limits, *, max_pages: int,
                 clock: Callable[[], float] = time.time, wait: Callable[[float], bool] | None = None) -> None:
        self.client = client
        self.limits = limits
        self.max_pages = max_pages
        self.clock = clock
        self.wait = wait or client.cancel.wait

    def run(self, application_id: str) -> list[Finding]:
        """The three findings, in order. AuthError and ApplicationNotFound propagate (the caller says so)."""
        probe = self._post(application_id)
        lengths = f"name {self.limits.max_name_length}, description {self.limits.max_description_length} characters"
        accepted = f"accepted at the maximum lengths ({lengths})"
        if isinstance(probe, Finding):
            listed = Finding("listed with its description verbatim", Result.UNKNOWN, "no probe run was created")
            order = Finding("the run list is newest first", Result.UNKNOWN, "no probe run was created")
            return [Finding(accepted, probe.result, probe.detail), listed, order]
        findings = [Finding(accepted, Result.HELD, f"run {probe.run_id}" if probe.run_id
                            else "the answer was lost; the run was looked up by its token")]
        listing = self._await_listing(application_id, probe)
        findings.append(self._listed(probe, listing))
        # Only the probe on the first page: a second one, a second later, tells the order.
        if len(listing.first_page) < 2 and listing.found is not None and not self.wait(SECOND_PROBE_SECONDS):
            second = self._post(application_id)
            if not isinstance(second, Finding):
                listing = self._await_listing(application_id, second)
        findings.append(self._order(listing))
        return findings

    # -- steps ---------------------------------------------------------------------------------

    def _post(self, application_id: str) -> _Probe | Finding:
        """Upload `{}` as input and output and post the probe; a Finding when the API refused it."""
        token = uuid.uuid4().hex
        name, description = probe_texts(self.limits, token)
        probe = _Probe(token, name, description)
        ids = []
        for _ in ("input", "output"):
            target = self.client.new_upload(application_id)
            self.client.put_file(target, lambda: io.BytesIO(b"{}"), 2)
            ids.append(target.upload_id)
        body = {"upload_id": ids[0], "name": name, "description": description,
                "configuration": {"format": {"input": {"type": "json"}, "output": {"type": "json"}}},
                "result": {"status": "succeeded", "output_upload_id": ids[1]}}
        probe.posted_at = self.clock()
        try:
            probe.run_id = self.client.create_run(application_id, body, None)
        except (AuthError, ApplicationNotFound):
            raise
        except RejectedError as exc:
            return Finding("", Result.VIOLATED, f"the API refused the probe: {exc}")
        except UncertainError:
            pass   # it may exist: the listing will tell
        except ApiError as exc:
            return Finding("", Result.UNKNOWN, f"the probe could not be posted: {exc}")
        return probe

    def _await_listing(self, application_id: str, probe: _Probe) -> _Listing:
        """Read the list until the probe is in it or `retry.lookup_grace_seconds` have passed."""
        deadline = probe.posted_at + self.limits.grace_seconds
        while True:
            listing = self._list(application_id, probe)
            if listing.found is not None or self.clock() >= deadline:
                return listing
            if self.wait(min(POLL_SECONDS, max(0.0, deadline - self.clock()))):
                return listing

    def _list(self, application_id: str, probe: _Probe) -> _Listing:
        listing = _Listing()
        token: str | None = None
        for page in range(self.max_pages):
            try:
                runs, token = self.client.list_runs(application_id, token)
            except (AuthError, ApplicationNotFound):
                raise
            except ApiError:
                listing.complete = False
                return listing
            if page == 0:
                listing.first_page = [t for t in (_created_at(r) for r in runs) if t is not None]
            for run in runs:
                if run.get("id") == probe.run_id or (probe.token in str(run.get("description") or "")):
                    listing.found = run
            if listing.found is not None or not token:
                return listing
        listing.complete = False
        return listing

    def _listed(self, probe: _Probe, listing: _Listing) -> Finding:
        grace = self.limits.grace_seconds
        assumption = f"listed within {grace:g} s with its description verbatim"
        if listing.found is None:
            if not listing.complete:
                return Finding(assumption, Result.UNKNOWN,
                               f"the list could not be read to its end (more than {self.max_pages} pages, "
                               "or a page failed)")
            return Finding(assumption, Result.VIOLATED, f"the probe run was not listed within {grace:g} s")
        got = listing.found.get("description")
        if got == probe.description:
            waited = max(0.0, self.clock() - probe.posted_at)
            return Finding(assumption, Result.HELD, f"listed after {waited:.1f} s")
        if isinstance(got, str) and f"{RUN_TOKEN_PREFIX}{probe.token}" in got:
            return Finding(assumption, Result.HELD,
                           f"the token line is intact, the rest of the description was altered "
                           f"({len(got)} characters listed, {len(probe.description)} sent)")
        shown = len(got) if isinstance(got, str) else "no"
        return Finding(assumption, Result.VIOLATED,
                       f"the listed description lacks the token line ({shown} characters listed, "
                       f"{len(probe.description)} sent)")

    def _order(self, listing: _Listing) -> Finding:
        assumption = "the run list is newest first"
        times = listing.first_page
        if len(times) < 2 or len(set(times)) < 2:
            return Finding(assumption, Result.UNKNOWN, "fewer than two runs with distinct creation times listed")
        steps = [b - a for a, b in itertools.pairwise(times)]
        if all(s <= 0 for s in steps):
            return Finding(assumption, Result.HELD, f"{len(times)} runs on the first page, newest first")
        if all(s >= 0 for s in steps):
            return Finding(assumption, Result.VIOLATED, "the list is oldest first")
        return Finding(assumption, Result.VIOLATED, "the list is in no order of creation time")


def _created_at(run: dict[str, Any]) -> float | None:
    value = run.get("created_at")
    try:
        return parse_iso(value) if isinstance(value, str) else None
    except ValueError:
        return None
