"""The record of an attempt: outcomes applied to the envelope, the reports owed, the entry saved or
removed, one log line per recipient. Blocking (file I/O and fsync): run it in a worker thread.

Per recipient, before anything else happens:

- sent: ``delivered`` (a ``relayed`` report if NOTIFY=SUCCESS was asked for and the next hop
  does not speak DSN; if it does, the parameters went along and it reports, RFC 3461 6.2);
- bounced, or deferred past ``[queue] lifetime``: ``bounced`` with a ``failed`` report to the
  sender (RFC 3464); mail from ``<>`` is ``failed`` and never reported to its sender;
- deferred: ``deferred`` until the next attempt of the schedule (:mod:`.schedule`), with a
  ``delayed`` report once the message is older than ``[queue] delay_warning``.

A message leaves the queue only when every recipient is final, and only after its reports are
committed. A report that cannot be committed (a full disk) leaves the recipients it is about
pending, on the backoff schedule, so that their report is tried again rather than lost;
recipients delivered in the same attempt are recorded as delivered. Mail from ``<>`` that fails
goes to the postmaster (``[delivery] null_sender_failures``) or only to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

from ..config import Settings
from ..queue.bounce import RecipientReport, single_line
from ..queue.store import FINAL, PENDING, QueuedRecipient, QueueEntry, QueueStore
from ..store.durable import StorageError
from .outcome import Outcome
from .reports import NOTICE_PARAM, Reporter, original_recipient, wants
from .schedule import Schedule

__all__ = ["Bookkeeper"]

log = logging.getLogger("taube.delivery")

Action = Literal["failed", "delayed", "relayed"]


class Bookkeeper:
    """Applies attempts to the queue. ``settings`` may be replaced on reload; ``wake`` is told
    of every report that went into the queue (a report to a remote address)."""

    def __init__(self, *, settings: Settings, store: QueueStore, reporter: Reporter,
                 clock: Callable[[], float], wake: Callable[[str], None]) -> None:
        self.settings = settings
        self.store = store
        self.reporter = reporter
        self.clock = clock
        self.wake = wake

    def apply(self, queue_id: str, outcomes: Mapping[str, Outcome], dsn_passed: bool,
              known: QueueEntry | None = None) -> None:
        """Update the envelope with ``outcomes``, send the reports, save or remove.

        ``known`` is the entry as the scan read it. When ``outcomes`` cover every recipient
        still pending in it, nobody else can have changed the envelope since (only this
        attempt held those recipients, the others were final), so it is not read again."""
        entry = self._current(queue_id, outcomes, known)
        if entry is None:
            log.info("%s: deleted during delivery", queue_id)
            return
        now = self.clock()
        schedule = Schedule.from_settings(self.settings.queue)
        expired = schedule.expired(entry.received_at, now)
        reports: dict[Action, list[RecipientReport]] = {"failed": [], "delayed": [], "relayed": []}
        updated: list[QueuedRecipient] = []
        for r in entry.recipients:
            o = outcomes.get(r.address)
            if o is None or r.status not in PENDING:
                updated.append(r)
                continue
            attempts = r.attempts + 1
            common = dict(attempts=attempts, last_attempt=now, remote_mta=o.remote_mta)
            if o.kind == "sent":
                r = replace(r, status="delivered", last_error=None, **common)
                if wants(r.notify, "SUCCESS") and not dsn_passed:
                    reports["relayed"].append(_report(r, "relayed", o, now))
                status = "sent"
            elif o.kind == "bounced" or expired:
                final_status = "bounced" if entry.sender else "failed"
                r = replace(r, status=final_status, last_error=_one_line(o.text), **common)
                if wants(r.notify, "FAILURE"):
                    reports["failed"].append(_report(r, "failed", o, now))
                status = "bounced" if o.kind == "bounced" else "expired"
            else:
                next_attempt = schedule.next_attempt(entry.received_at, now, attempts)
                r = replace(r, status="deferred", last_error=_one_line(o.text),
                            next_attempt=next_attempt, **common)
                if (schedule.delay_warning_due(entry.received_at, now, r.delay_warned)
                        and wants(r.notify, "DELAY") and entry.sender):
                    reports["delayed"].append(_report(r, "delayed", o, now))
                    r = replace(r, delay_warned=True)
                status = "deferred"
            updated.append(r)
            _log_attempt(entry, r, o, now, status)
        entry = replace(entry, recipients=tuple(updated))
        unsent = self._send_reports(entry, reports)
        if unsent:
            entry = replace(entry, recipients=tuple(_report_owed(entry, r, unsent, schedule, now)
                                                    for r in entry.recipients))
        self._save(entry)

    def _current(self, queue_id: str, outcomes: Mapping[str, Outcome],
                 known: QueueEntry | None) -> QueueEntry | None:
        """The entry the outcomes apply to; None when it left the queue meanwhile."""
        if known is not None and {r.address for r in known.recipients if r.status in PENDING} <= outcomes.keys():
            return known if self.store.message_path(queue_id).exists() else None
        try:
            return self.store.load(queue_id)
        except FileNotFoundError:
            return None

    def _save(self, entry: QueueEntry) -> None:
        """Remove ``entry`` once every recipient is final, else save it."""
        if all(r.status in FINAL for r in entry.recipients):
            self.store.remove(entry.queue_id, durable=False)
            log.info("%s: removed", entry.queue_id)
            return
        try:
            self.store.save(entry)
        except FileNotFoundError:
            log.info("%s: deleted during delivery", entry.queue_id)

    def _send_reports(self, entry: QueueEntry,
                      reports: Mapping[Action, list[RecipientReport]]) -> dict[str, set[str]]:
        """Commit the reports of one attempt; the recipients whose report could not be
        committed, by action ("failed", "delayed"). Mail from <> gets none: its failures go
        to the postmaster or the log, and a failed notice to the postmaster only to the log."""
        failed, delayed, relayed = reports["failed"], reports["delayed"], reports["relayed"]
        unsent: dict[str, set[str]] = {}
        if not entry.sender:
            if failed:
                notice = entry.params.get(NOTICE_PARAM)
                if self.settings.delivery.null_sender_failures == "postmaster" and notice != "postmaster":
                    to = self.reporter.postmaster()
                    if not self._report(entry, to, failed, "headers", notice="postmaster"):
                        unsent["failed"] = {r.address for r in failed}
                else:
                    log.warning("%s: undeliverable mail from <> discarded: %s", entry.queue_id,
                                ", ".join(f"<{r.address}>" for r in failed))
        else:
            ret = entry.params.get("RET", "FULL").upper()
            if failed and not self._report(entry, entry.sender, failed, "headers" if ret == "HDRS" else "full"):
                unsent["failed"] = {r.address for r in failed}
            if delayed and not self._report(entry, entry.sender, delayed, "headers"):
                unsent["delayed"] = {r.address for r in delayed}
            if relayed and not self._report(entry, entry.sender, relayed, "headers"):
                # Those recipients have the message: sending it again to retry a success notice
                # would duplicate it, so the notice is what gives way.
                log.error("%s: the \"relayed\" notice to <%s> for %s is dropped", entry.queue_id,
                          entry.sender, ", ".join(f"<{r.address}>" for r in relayed))
        return unsent

    def _report(self, entry: QueueEntry, to: str, reports: Sequence[RecipientReport],
                content: Literal["full", "headers"], notice: str = "dsn") -> bool:
        """Build and commit one report; False (logged) when it could not be stored (a full
        disk, an I/O error), so that the caller keeps what it is about."""
        action = reports[0].action
        try:
            with self.store.open_message(entry.queue_id, entry.body_offset) as original:
                report_id = self.reporter.send(
                    to=to, queue_id=entry.queue_id, arrival=entry.received_at, reports=reports,
                    original=original, return_content=content, envid=entry.params.get("ENVID"),
                    notice=notice)
        except (StorageError, OSError) as e:
            log.warning("%s: the %s report to <%s> could not be stored: %s", entry.queue_id,
                        action, to, e)
            return False
        if report_id is not None:
            self.wake(report_id)  # a report to a remote address waits in the queue now
        return True


def _report_owed(entry: QueueEntry, r: QueuedRecipient, unsent: Mapping[str, set[str]],
                 schedule: Schedule, now: float) -> QueuedRecipient:
    """``r`` as it stays when its report of this attempt could not be committed: a failure
    stays pending (deferred on the backoff schedule; the next attempt delivers, or fails and
    reports again), a delay warning stays unsent (the next deferral tries it again)."""
    if r.address in unsent.get("failed", ()):
        log.warning("%s: to=<%s> stays queued: its failure report could not be stored; "
                    "retried at the next attempt", entry.queue_id, r.address)
        return replace(r, status="deferred", next_attempt=now + schedule.wait_after(r.attempts))
    if r.address in unsent.get("delayed", ()):
        return replace(r, delay_warned=False)
    return r


def _log_attempt(entry: QueueEntry, r: QueuedRecipient, o: Outcome, now: float,
                 status: str) -> None:
    """The Postfix-style line per recipient and attempt: relay, delay, dsn, status, reply."""
    orig = f", orig_to=<{r.original}>" if r.original.lower() != r.address.lower() else ""
    log.info("%s: to=<%s>%s, relay=%s, delay=%.1f, dsn=%s, status=%s (%s)",
             entry.queue_id, r.address, orig, o.relay, now - entry.received_at, o.status,
             status, _one_line(o.text))


def _report(r: QueuedRecipient, action: Action, o: Outcome, now: float) -> RecipientReport:
    """The DSN fields of one recipient (RFC 3464 2.3); the status agrees with the action."""
    status = o.status
    if action == "relayed":
        status = "2.0.0" if not status.startswith("2") else status
    elif action == "failed" and status.startswith("2"):
        status = "5.0.0"
    return RecipientReport(address=r.address, original=original_recipient(r.orcpt, r.original),
                           action=action, status=status, diagnostic=o.diagnostic or o.text,
                           remote_mta=o.remote_mta, last_attempt=now)


def _one_line(text: str, limit: int = 500) -> str:
    """Remote text for a log line and last_error: on one line (a CR/LF could forge a log
    line), cut at ``limit`` characters."""
    clean = single_line(text)
    return clean if len(clean) <= limit else clean[:limit] + "..."
