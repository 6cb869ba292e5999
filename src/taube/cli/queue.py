"""``taube queue``: inspect the outbound queue, delete entries, ask for delivery now.

Read-only except for ``delete``, and safe while the server runs: the queue store's files are only
ever replaced by atomic renames, and QueueStore.remove takes the envelope away before the data.
``flush`` and ``retry`` leave a request for the queue runner and wake the server with SIGUSR1,
as ETRN does over SMTP (RFC 1985).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from ..config import Settings, load_settings
from .common import Failure, config_option, console, print_rows

if TYPE_CHECKING:
    from ..queue.spool import QueuedRecipient, QueueEntry, QueueStore

_ERROR_WIDTH = 50  # characters of the last error shown by `queue list`
_PROGRESS_FROM = 100  # `queue delete --all` shows a progress bar from this many entries (on a TTY)
_LIST_HEADERS = ("id", "age", "size", "sender", "recipients", "next attempt", "last error")
_HEADER_LIMIT = 1024 * 1024  # octets of header section `queue show` reads at most


def format_duration(seconds: float) -> str:
    """A duration in its largest whole unit: ``45s``, ``5m``, ``2h``, ``3d`` (negative as 0s)."""
    whole = max(0, int(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= length:
            return f"{whole // length}{unit}"
    return f"{whole}s"


def format_size(octets: int) -> str:
    """A size for people: ``812 B``, ``1.5 KiB``, ``23.0 MiB`` (binary units, one decimal)."""
    if octets < 1024:
        return f"{octets} B"
    value = float(octets)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def format_due(when: float, now: float) -> str:
    """When the next attempt is due: ``now`` if it is (over)due, else ``in 5m``."""
    return "now" if when <= now else f"in {format_duration(when - now)}"


def shorten(text: str, width: int) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``width`` characters with ``...``."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: max(0, width - 3)] + "..."


def _queue_store(config: Path | None) -> QueueStore:
    # imported here: the spool pulls in the Maildir store, which the other commands do not need
    from ..queue.spool import QueueStore

    return QueueStore(load_settings(config).data_dir)


def _envelope_path(store: QueueStore, queue_id: str) -> Path:
    """The envelope file of ``queue_id``, which must exist; else a refusal naming the id."""
    try:
        path = store.envelope_path(queue_id)  # ValueError: not a queue id at all
    except ValueError:
        path = None
    if path is None or not path.exists():
        raise Failure(f"no such queue entry: {queue_id}")
    return path


def _load_entry(store: QueueStore, queue_id: str) -> QueueEntry:
    """The entry of ``queue_id``; a refusal naming it when there is none."""
    _envelope_path(store, queue_id)
    try:
        return store.load(queue_id)
    except FileNotFoundError:
        raise Failure(f"no such queue entry: {queue_id}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise Failure(f"unreadable queue entry {queue_id}: {e}") from None


def _pending(entry: QueueEntry) -> list[QueuedRecipient]:
    """The recipients still to be delivered."""
    from ..queue.spool import FINAL

    return [r for r in entry.recipients if r.status not in FINAL]


def _list_row(entry: QueueEntry, now: float) -> list[str]:
    pending = _pending(entry)
    due = format_due(min(r.next_attempt for r in pending), now) if pending else "-"
    error = next((r.last_error for r in pending if r.last_error), None)
    return [
        entry.queue_id,
        format_duration(now - entry.received_at),
        str(entry.size),
        f"<{entry.sender}>" if entry.sender else "<>",
        ",".join(r.address for r in pending),
        due,
        shorten(error, _ERROR_WIDTH) if error else "",
    ]


def _format_time(timestamp: float, now: float) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{moment} ({format_duration(now - timestamp)} ago)"


def _envelope_lines(entry: QueueEntry, now: float) -> list[str]:
    """The envelope of ``entry`` for `queue show`, one field a line."""
    lines = [
        f"queue id:  {entry.queue_id}",
        f"sender:    <{entry.sender}>",
        f"arrival:   {_format_time(entry.received_at, now)}",
        f"client:    {entry.client_address} (helo {entry.helo})",
        f"size:      {entry.size} octets ({format_size(entry.size)})",
    ]
    if entry.params:
        params = " ".join(f"{k}={v}" if v else k for k, v in entry.params.items())
        lines.append(f"params:    {params}")
    for r in entry.recipients:
        lines.append(f"recipient: <{r.address}>"
                     + (f" (original <{r.original}>)" if r.original != r.address else ""))
        lines.append(f"  status {r.status}, attempts {r.attempts}, "
                     f"next attempt {format_due(r.next_attempt, now)}")
        if r.notify is not None or r.orcpt:
            lines.append("  dsn" + (f" notify {','.join(r.notify)}" if r.notify is not None else "")
                         + (f" orcpt {r.orcpt}" if r.orcpt else ""))
        if r.last_error:
            lines.append(f"  last error: {shorten(r.last_error, 1000)}"
                         + (f" (from {r.remote_mta})" if r.remote_mta else ""))
    return lines


def _header_section(message: BinaryIO) -> str:
    """The header lines of ``message`` (CRLF or LF), up to the empty line that ends them."""
    lines = []
    read = 0
    for raw in message:
        read += len(raw)
        line = raw.rstrip(b"\r\n")
        if not line or read > _HEADER_LIMIT:
            break
        lines.append(line.decode("utf-8", errors="replace"))
    return "\n".join(lines)


def _read_headers(store: QueueStore, queue_id: str) -> str:
    try:
        with store.open_message(queue_id) as message:
            return _header_section(message)
    except FileNotFoundError:  # delivered or deleted since the envelope was read
        raise Failure(f"no such queue entry: {queue_id}") from None


def _print_queue_table(rows: Sequence[Sequence[str]]) -> None:
    """The rows of `queue list` as a table whose cells are wrapped, never cut: a queue id or an
    address is only useful whole."""
    from rich.table import Table

    short = {"id", "age", "size"}  # kept on one line; the others fold
    table = Table()
    for header in _LIST_HEADERS:
        table.add_column(header, overflow="fold", no_wrap=header in short,
                         justify="right" if header == "size" else "left")
    table.columns[0].min_width = max(len(row[0]) for row in rows)
    for row in rows:
        table.add_row(*row)
    console().print(table)


@click.group()
def queue() -> None:
    """The outbound queue: messages waiting for remote delivery."""


@queue.command("list")
@config_option
def queue_list(config: Path | None) -> None:
    """List the queued messages, oldest first.

    Columns: id, age, size (octets), sender, recipients not yet delivered, next attempt,
    last error. Without a terminal: tab-separated lines without a header.
    """
    entries = _queue_store(config).list()
    if not entries:
        click.echo("queue is empty")
        return
    now = time.time()
    rows = [_list_row(entry, now) for entry in entries]
    if sys.stdout.isatty():
        _print_queue_table(rows)
    else:
        print_rows(_LIST_HEADERS, rows)


@queue.command("show")
@click.argument("queue_id", metavar="ID")
@config_option
def queue_show(queue_id: str, config: Path | None) -> None:
    """Show the envelope and the message headers of queue entry ID."""
    store = _queue_store(config)
    entry = _load_entry(store, queue_id)
    headers = _read_headers(store, queue_id)
    click.echo("\n".join([*_envelope_lines(entry, time.time()), "", headers]))


def _delete_all(store: QueueStore) -> int:
    """Remove every entry; a progress bar on a terminal when there are many. Returns the count."""
    ids = store.ids()
    if len(ids) >= _PROGRESS_FROM and sys.stdout.isatty():
        from rich.progress import track

        ids_shown: Iterable[str] = track(ids, description="deleting", transient=True)
    else:
        ids_shown = ids
    for queue_id in ids_shown:
        store.remove(queue_id)
    return len(ids)


@queue.command("delete")
@click.argument("queue_id", metavar="[ID]", required=False)
@click.option("--all", "everything", is_flag=True, help="Delete every queued message.")
@config_option
@click.pass_context
def queue_delete(ctx: click.Context, queue_id: str | None, everything: bool,
                 config: Path | None) -> None:
    """Delete queue entry ID, or with --all every entry; the messages are not bounced.

    Safe while the server runs. A message whose delivery is under way at that moment may
    still be delivered, once.
    """
    if everything and queue_id is None:
        count = _delete_all(_queue_store(config))
    elif queue_id is not None and not everything:
        store = _queue_store(config)
        _envelope_path(store, queue_id)  # only its existence: a damaged entry can go too
        store.remove(queue_id)
        count = 1
    else:
        raise click.UsageError("give either a queue ID or --all", ctx)
    click.echo(f"{count} queue {'entry' if count == 1 else 'entries'} deleted")


def _wake_server(data_dir: Path) -> bool:
    """Tell the running server (if any) to look at its requests now; whether one runs."""
    import os
    import signal

    from ..pidfile import running_pid

    pid = running_pid(data_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True


def _attempt_marks(store: QueueStore, ids: Iterable[str]) -> dict[str, tuple[int, ...] | None]:
    """Per queue id the attempt counts of its recipients (None: no longer queued)."""
    marks: dict[str, tuple[int, ...] | None] = {}
    for queue_id in ids:
        try:
            marks[queue_id] = tuple(r.attempts for r in store.load(queue_id).recipients)
        except (FileNotFoundError, ValueError):
            marks[queue_id] = None
    return marks


def _wait_for_attempts(store: QueueStore, ids: list[str], timeout: float) -> tuple[int, int]:
    """Wait until every message in ``ids`` has had a delivery attempt (or left the queue), at
    most ``timeout`` seconds; a progress bar on a terminal. Returns (attempted, gone)."""
    before = _attempt_marks(store, ids)
    deadline = time.monotonic() + timeout
    done: set[str] = set()
    progress = None
    task = None
    if sys.stdout.isatty():
        from rich.progress import Progress

        progress = Progress(transient=True)
        progress.start()
        task = progress.add_task("delivering", total=len(ids))
    try:
        while len(done) < len(ids) and time.monotonic() < deadline:
            now_marks = _attempt_marks(store, [i for i in ids if i not in done])
            for queue_id, mark in now_marks.items():
                if mark is None or mark != before.get(queue_id):
                    done.add(queue_id)
            if progress is not None and task is not None:
                progress.update(task, completed=len(done))
            if len(done) < len(ids):
                time.sleep(0.1)
    finally:
        if progress is not None:
            progress.stop()
    gone = sum(1 for mark in _attempt_marks(store, ids).values() if mark is None)
    return len(done), gone


def _request(ctx_settings: Settings, store: QueueStore, request: dict[str, object], ids: list[str],
             wait: bool, timeout: float) -> None:
    from ..delivery.requests import write_request

    write_request(ctx_settings.data_dir, request)
    if not _wake_server(ctx_settings.data_dir):
        click.echo("taube is not running: the request is carried out when it starts")
        return
    if not wait:
        click.echo(f"delivery of {len(ids)} message(s) started")
        return
    attempted, gone = _wait_for_attempts(store, ids, timeout)
    left = len(ids) - gone
    click.echo(f"{len(ids)} message(s) tried: {gone} left the queue, {left} still queued"
               + ("" if attempted == len(ids) else f" ({len(ids) - attempted} not tried within {timeout:g}s)"))


_wait_option = click.option("--wait/--no-wait", default=True, show_default=True,
                            help="Wait until every message concerned has been tried.")
_timeout_option = click.option("--timeout", type=click.FloatRange(min=0), default=120.0,
                               show_default=True, help="Seconds to wait at most.")


@queue.command("flush")
@click.argument("domain", required=False)
@_wait_option
@_timeout_option
@config_option
def queue_flush(domain: str | None, wait: bool, timeout: float, config: Path | None) -> None:
    """Try every deferred message now, or only those for DOMAIN (and, as "@DOMAIN", its
    subdomains), as ETRN does."""
    settings = load_settings(config)
    store = _queue_store(config)
    subdomains = False
    if domain is not None:
        if domain.startswith("@"):
            subdomains, domain = True, domain[1:]
        domain = domain.strip().lower().rstrip(".")
        if not domain:
            raise Failure("give a domain, e.g. example.org or @example.org")
    ids = [entry.queue_id for entry in store.list() if entry.waiting_for(domain, subdomains)]
    if not ids:
        click.echo("no messages waiting" + (f" for {domain}" if domain else ""))
        return
    _request(settings, store, {"action": "flush", "domain": domain, "subdomains": subdomains},
             ids, wait, timeout)


@queue.command("retry")
@click.argument("queue_id", metavar="ID")
@_wait_option
@_timeout_option
@config_option
def queue_retry(queue_id: str, wait: bool, timeout: float, config: Path | None) -> None:
    """Try queue entry ID now, whatever its next attempt time."""
    settings = load_settings(config)
    store = _queue_store(config)
    entry = _load_entry(store, queue_id)
    if not _pending(entry):
        raise Failure(f"{queue_id}: no recipient is waiting for delivery")
    _request(settings, store, {"action": "retry", "id": queue_id}, [queue_id], wait, timeout)
