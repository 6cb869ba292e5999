"""Relay (store-and-forward) throughput: taube side by side with a private Postfix instance.

Each measurement starts Postfix's ``smtp-sink`` (the final hop: accepts and discards, counting
messages) and a fresh relay in a fresh directory, both on free loopback ports; the relay forwards
everything non-local to the sink (``relayhost = [127.0.0.1]:SINK``). A load generator sends a
bounded number of 1 KiB messages for ``user@sink.test`` to the relay at a given concurrency.
Measured from the first connection: until the last ``250`` from the relay (accept rate) and
until the sink has received every message (end-to-end rate). Then the relay's queue must become
empty, and after the relay has stopped the sink must have counted exactly the acknowledged
messages: a lost or duplicated message is a failure, not a slow run. Runs are interleaved (run 1
of everything, then run 2, ...); the table shows medians and taube's rate divided by Postfix's.

Usage: relay_bench.py [--runs 3] [--messages 2000] [--concurrency 1,20] [--only taube,postfix]
                      [--loadgens smtp-source,loadgen]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import loadgen
from postfix_instance import PostfixInstance
from servers import (HOST, START_TIMEOUT, STOP_TIMEOUT, VENV_BIN, ServerUnavailable,
                     count_files, free_port, process_tree_cpu_seconds, spawn, terminate, wait_ready)
from smtp_bench import (LoadOutcome, checked_choices, command_output, csv_list,
                        smtp_source_path)

SENDER = "from@bench.test"
SINK_DOMAIN = "sink.test"
RECIPIENT = f"user@{SINK_DOMAIN}"
RELAY_DOMAIN = "relay.bench.test"  # the relays' own (local) domain; the recipients are not in it
RESULTS = Path(__file__).resolve().parent / "results" / "relay-latest.json"
LOGS = RESULTS.parent / "relay-logs"
IMPLEMENTATIONS = ("taube", "postfix")
LOADGENS = ("smtp-source", "loadgen")
LOAD_TIMEOUT = 600.0
FORWARD_TIMEOUT = 300.0  # after the last 250: until the sink has every message
DRAIN_TIMEOUT = 60.0  # after that: until the relay's queue is empty
SINK_SETTLE = 0.3  # after the relay stopped: late (duplicate) deliveries would show by then


# --- the final hop -----------------------------------------------------------------------------
class Sink:
    """``smtp-sink -c`` on a free loopback port; a thread reads its running message counter."""

    COUNTER = re.compile(rb"mesg=(\d+)")
    SESSIONS = re.compile(rb"sess=(\d+)")

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "smtp-sink.log"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.sessions = 0  # SMTP sessions the sink has seen end (readiness probes included)
        self.target: int | None = None
        self.reached_at: float | None = None  # perf_counter() when count first reached target
        self._reached = threading.Event()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        executable = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not Path(executable).exists():
            raise ServerUnavailable("smtp-sink is not installed (bash bench/install-peers.sh)")
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        command = [executable, *user, "-c", f"{HOST}:{self.port}", "1024"]
        with self.log.open("wb") as log:
            try:
                self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=log, cwd=self.workdir)
            except OSError as exc:
                raise ServerUnavailable(f"cannot run smtp-sink: {exc}") from exc
        self._reader = threading.Thread(target=self._read, name="smtp-sink counter", daemon=True)
        self._reader.start()
        try:
            wait_ready(self.port, time.monotonic() + START_TIMEOUT, self.process, self.log)
        except ServerUnavailable:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        pending = b""
        while chunk := self.process.stdout.read1(65536):
            now = time.perf_counter()
            pending += chunk
            *records, pending = pending.split(b"\r")
            for record in records:
                if match := self.SESSIONS.search(record):
                    self.sessions = max(self.sessions, int(match.group(1)))
                if match := self.COUNTER.search(record):
                    self._update(int(match.group(1)), now)

    def _update(self, count: int, now: float) -> None:
        with self._lock:
            self.count = max(self.count, count)
            if self.target is not None and self.reached_at is None and self.count >= self.target:
                self.reached_at = now
                self._reached.set()

    def expect(self, target: int) -> None:
        with self._lock:
            self.target = target
            if self.count >= target and self.reached_at is None:
                self.reached_at = time.perf_counter()
                self._reached.set()

    def wait(self, timeout: float) -> float | None:
        """The perf_counter() time the target was reached, or None after ``timeout``."""
        self._reached.wait(timeout)
        return self.reached_at

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)


# --- the relays under test ---------------------------------------------------------------------
class TaubeRelay:
    """``taube serve``: [smtp] on a free port, the other listeners off, relayhost = the sink."""

    name = "taube"
    executable = VENV_BIN / "taube"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.workdir = workdir
        self.sink_port = sink_port
        self.port = free_port()
        self.log = workdir / "taube.log"
        self.config = workdir / "taube.toml"
        self.queue = workdir / "var" / "queue"
        self.process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        return (f'hostname = "{RELAY_DOMAIN}"\n'
                'data_dir = "var"\n'
                f'domains = ["{RELAY_DOMAIN}"]\n'
                'trusted_networks = ["127.0.0.0/8"]\n'
                "[smtp]\n"
                f'listen = ["{HOST}:{self.port}"]\n'
                "max_connections = 500\n"
                "max_connections_per_client = 500\n"
                "[submission]\nlisten = []\n"
                "[smtps]\nlisten = []\n"
                "[pop3]\nlisten = []\n"
                "[pop3s]\nlisten = []\n"
                "[delivery]\n"
                f'relayhost = "[{HOST}]:{self.sink_port}"\n')

    def start(self) -> None:
        if not self.executable.exists():
            raise ServerUnavailable(f"{self.executable} is not installed")
        self.config.write_text(self.config_text())
        self.process = spawn([str(self.executable), "serve", "--config", str(self.config)],
                             self.log, self.workdir)
        try:
            wait_ready(self.port, time.monotonic() + START_TIMEOUT, self.process, self.log)
        except ServerUnavailable:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)

    def queued_count(self) -> int:
        """Envelopes plus data files still in the queue."""
        return count_files(self.queue / "envelopes") + count_files(self.queue / "messages")

    def cpu_seconds(self) -> float | None:
        return None if self.process is None else process_tree_cpu_seconds(self.process.pid)


class PostfixRelay:
    """A private Postfix instance with ``relayhost = [127.0.0.1]:SINK`` and the smtp(8) client."""

    name = "postfix"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.port = free_port()
        self.instance = PostfixInstance(workdir, HOST, self.port, RELAY_DOMAIN, "user",
                                        delivery_user=pwd.getpwnam("nobody"),
                                        relayhost=f"[{HOST}]:{sink_port}")
        self.log = self.instance.log

    def start(self) -> None:
        try:
            self.instance.start(START_TIMEOUT)
        except RuntimeError as exc:
            raise ServerUnavailable(str(exc)) from exc
        try:
            wait_ready(self.port, time.monotonic() + START_TIMEOUT, None, self.instance.log)
        except ServerUnavailable:
            self.stop()
            raise

    def stop(self) -> None:
        self.instance.stop(STOP_TIMEOUT)

    def queued_count(self) -> int:
        return self.instance.queued_count()

    def cpu_seconds(self) -> None:
        """Postfix is a dozen processes that come and go: not measured."""
        return None


RELAYS: dict[str, type[TaubeRelay] | type[PostfixRelay]] = {"taube": TaubeRelay,
                                                            "postfix": PostfixRelay}


# --- load --------------------------------------------------------------------------------------
def run_builtin_loadgen(port: int, messages: int, concurrency: int, size: int) -> LoadOutcome:
    loadgen.SENDER, loadgen.RECIPIENT = SENDER, RECIPIENT  # read at call time by loadgen

    async def bounded() -> LoadOutcome:
        result = await asyncio.wait_for(loadgen.run_load(HOST, port, messages, concurrency, size),
                                        LOAD_TIMEOUT)
        return LoadOutcome(result.accepted, result.seconds, dict(result.errors))

    try:
        return asyncio.run(bounded())
    except asyncio.TimeoutError:
        return LoadOutcome(None, LOAD_TIMEOUT, {"load timed out": 1})


def run_smtp_source(port: int, messages: int, concurrency: int, size: int) -> LoadOutcome:
    """smtp-source -d (many messages per connection); exit status 0 means every message got 250."""
    command = [str(smtp_source_path()), "-d", "-s", str(concurrency), "-m", str(messages),
               "-l", str(size), "-f", SENDER, "-t", RECIPIENT, f"{HOST}:{port}"]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=LOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return LoadOutcome(None, LOAD_TIMEOUT, {"smtp-source timed out": 1})
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        message = (done.stderr or done.stdout).decode(errors="replace").strip()[-200:]
        return LoadOutcome(None, seconds, {f"smtp-source exit {done.returncode}: {message}": 1})
    return LoadOutcome(messages, seconds, {})


LOAD_RUNNERS = {"loadgen": run_builtin_loadgen, "smtp-source": run_smtp_source}


# --- one measurement ---------------------------------------------------------------------------
@dataclass
class Measurement:
    implementation: str
    loadgen: str
    concurrency: int
    run: int
    messages: int
    accepted: int | None = None
    accept_seconds: float = 0.0  # first connection .. last 250 from the relay
    end_to_end_seconds: float | None = None  # first connection .. the sink has every message
    drained_seconds: float | None = None  # first connection .. the relay's queue is empty
    queue_left: int | None = None  # queue files still there at the end
    sink_count: int | None = None  # messages the sink received, counted after the relay stopped
    sink_sessions: int | None = None  # connections the relay opened to the sink
    relay_cpu_seconds: float | None = None  # taube only: CPU time until the queue was empty
    errors: dict[str, int] = field(default_factory=dict)
    server_log: str | None = None

    @property
    def accept_rate(self) -> float | None:
        if self.accepted and self.accept_seconds > 0:
            return self.accepted / self.accept_seconds
        return None

    @property
    def end_to_end_rate(self) -> float | None:
        if self.accepted and self.end_to_end_seconds:
            return self.accepted / self.end_to_end_seconds
        return None

    @property
    def relay_cpu_ms_per_message(self) -> float | None:
        if self.relay_cpu_seconds is None or not self.accepted:
            return None
        return 1000 * self.relay_cpu_seconds / self.accepted

    @property
    def relay_cpu_share(self) -> float | None:
        """CPU time over wall time until the queue was empty; 1.0 = one core kept busy."""
        if self.relay_cpu_seconds is None or not self.drained_seconds:
            return None
        return self.relay_cpu_seconds / self.drained_seconds

    @property
    def lost_or_extra(self) -> bool:
        """The sink did not get exactly the acknowledged messages, or some are stuck queued."""
        if self.accepted is None or self.sink_count is None:
            return False
        return self.sink_count != self.accepted or bool(self.queue_left)

    @property
    def clean(self) -> bool:
        return (self.accepted == self.messages and not self.errors and not self.lost_or_extra
                and self.end_to_end_seconds is not None and self.queue_left == 0)


def wait_drained(relay: TaubeRelay | PostfixRelay, began: float) -> tuple[int, float | None]:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        left = relay.queued_count()
        if left == 0:
            return 0, time.perf_counter() - began
        if time.monotonic() > deadline:
            return left, None
        time.sleep(0.01)


def measure(relay: TaubeRelay | PostfixRelay, sink: Sink, loadgen_name: str, concurrency: int,
            run: int, messages: int, size: int) -> Measurement:
    m = Measurement(relay.name, loadgen_name, concurrency, run, messages)
    cpu_before = relay.cpu_seconds()
    began = time.perf_counter()
    outcome = LOAD_RUNNERS[loadgen_name](relay.port, messages, concurrency, size)
    m.accepted, m.accept_seconds, m.errors = outcome.accepted, outcome.seconds, outcome.errors
    if outcome.accepted:
        sink.expect(outcome.accepted)
        reached = sink.wait(FORWARD_TIMEOUT)
        if reached is None:
            m.errors[f"sink short of {outcome.accepted} after {FORWARD_TIMEOUT:.0f} s"] = 1
        else:
            m.end_to_end_seconds = reached - began
    m.queue_left, m.drained_seconds = wait_drained(relay, began)
    cpu_after = relay.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        m.relay_cpu_seconds = cpu_after - cpu_before
    return m


def measure_fresh(implementation: str, loadgen_name: str, concurrency: int, run: int,
                  messages: int, size: int) -> Measurement:
    """Fresh sink and relay in a fresh directory; measure once; stop both; remove it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"taube-relay-bench-{implementation}-"))
    try:
        sink = Sink(workdir)
        sink.start()
        time.sleep(0.05)  # let the counter thread see the readiness probe's session
        probes = sink.sessions
        try:
            relay = RELAYS[implementation](workdir, sink.port)
            relay.start()
            try:
                m = measure(relay, sink, loadgen_name, concurrency, run, messages, size)
            finally:
                relay.stop()
            time.sleep(SINK_SETTLE)
            m.sink_count = sink.count
            m.sink_sessions = sink.sessions - probes
        finally:
            sink.stop()
        if m.errors or m.lost_or_extra or not m.clean:
            stem = f"{implementation}-{loadgen_name}-c{concurrency}-run{run}"
            m.server_log = keep_log_as(relay.log, stem)
        return m
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.sync()  # the next measurement must not pay for this one's writeback


def keep_log_as(log: Path, stem: str) -> str | None:
    if not log.exists():
        return None
    kept = LOGS / f"{stem}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    return str(kept)


def describe(m: Measurement) -> str:
    accept = f"{m.accept_rate:7.1f}" if m.accept_rate else "   -   "
    e2e = f"{m.end_to_end_rate:7.1f}" if m.end_to_end_rate else "   -   "
    text = (f"[run {m.run}] {m.implementation:<7} {m.loadgen:<11} c={m.concurrency:<3} "
            f"accept {accept} msgs/s, end-to-end {e2e} msgs/s; "
            f"accepted {'-' if m.accepted is None else m.accepted}/{m.messages}, "
            f"sink {'-' if m.sink_count is None else m.sink_count} "
            f"over {'-' if m.sink_sessions is None else m.sink_sessions} connection(s), "
            f"queue left {'-' if m.queue_left is None else m.queue_left}")
    if m.drained_seconds:
        text += f", drained at {m.drained_seconds:.2f} s"
    if m.relay_cpu_share is not None and m.relay_cpu_ms_per_message is not None:
        text += f", relay CPU {m.relay_cpu_share:.0%} ({m.relay_cpu_ms_per_message:.2f} ms/msg)"
    if m.errors:
        text += f", errors {m.errors}"
    if m.lost_or_extra:
        text += "  <-- SINK COUNT OR QUEUE DOES NOT MATCH THE 250s"
    if m.server_log:
        text += f"\n    relay log: {m.server_log}"
    return text


def run_all(args: argparse.Namespace) -> tuple[list[Measurement], dict[str, str]]:
    skipped: dict[str, str] = {}
    if smtp_source_path() is None and "smtp-source" in args.loadgens:
        skipped["smtp-source"] = "not installed (bash bench/install-peers.sh)"
    measurements: list[Measurement] = []
    for run in range(1, args.runs + 1):
        for concurrency in args.concurrency:
            for implementation in args.only:
                for loadgen_name in args.loadgens:
                    if implementation in skipped or loadgen_name in skipped:
                        continue
                    try:
                        m = measure_fresh(implementation, loadgen_name, concurrency, run,
                                          args.messages, args.size)
                    except ServerUnavailable as exc:
                        # Without smtp-sink nothing can be measured; otherwise skip the relay.
                        key = "smtp-sink" if "smtp-sink" in str(exc) else implementation
                        skipped[key] = str(exc)
                        print(f"skipping {key}: {exc}", file=sys.stderr, flush=True)
                        if key == "smtp-sink":
                            return measurements, skipped
                        continue
                    measurements.append(m)
                    print(describe(m), file=sys.stderr, flush=True)
    return measurements, skipped


# --- summary -----------------------------------------------------------------------------------
@dataclass
class Row:
    implementation: str
    loadgen: str
    concurrency: int
    accept_median: float | None
    end_to_end_median: float | None
    end_to_end_low: float | None
    end_to_end_high: float | None
    runs: int
    requested_runs: int
    accept_ratio: float | None = None  # taube / postfix
    end_to_end_ratio: float | None = None
    relay_cpu_ms_per_message: float | None = None
    notes: str = ""


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(measurements: list[Measurement]) -> list[Row]:
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.implementation, m.loadgen, m.concurrency), []).append(m)
    rows = []
    for (implementation, loadgen_name, concurrency), group in groups.items():
        valid = [m for m in group if m.clean]
        accept = [m.accept_rate for m in valid if m.accept_rate]
        e2e = [m.end_to_end_rate for m in valid if m.end_to_end_rate]
        cpu = [m.relay_cpu_ms_per_message for m in valid if m.relay_cpu_ms_per_message]
        errors = Counter[str]()
        for m in group:
            errors.update(m.errors)
        notes = []
        if bad := sum(m.lost_or_extra for m in group):
            notes.append(f"LOST/EXTRA/STUCK in {bad} run(s)")
        if errors:
            notes.append(f"{sum(errors.values())} error(s)")
        rows.append(Row(implementation, loadgen_name, concurrency, median(accept), median(e2e),
                        min(e2e, default=None), max(e2e, default=None), len(valid), len(group),
                        relay_cpu_ms_per_message=median(cpu), notes="; ".join(notes)))
    taube = {(r.loadgen, r.concurrency): r for r in rows if r.implementation == "taube"}
    for row in rows:
        ref = taube.get((row.loadgen, row.concurrency))
        if ref is None:
            continue
        if ref.accept_median and row.accept_median:
            row.accept_ratio = ref.accept_median / row.accept_median
        if ref.end_to_end_median and row.end_to_end_median:
            row.end_to_end_ratio = ref.end_to_end_median / row.end_to_end_median
    return sorted(rows, key=lambda r: (r.concurrency, r.loadgen, r.implementation != "taube"))


HEADERS = ["implementation", "load generator", "concurrency", "accept msgs/s",
           "end-to-end msgs/s", "e2e min–max", "runs", "taube ÷ peer (accept / e2e)",
           "CPU ms/msg", "notes"]


def table_cells(row: Row) -> list[str]:
    def number(value: float | None, fmt: str = ".1f") -> str:
        return format(value, fmt) if value else "-"

    ratio = (f"{number(row.accept_ratio, '.2f')} / {number(row.end_to_end_ratio, '.2f')}"
             if row.implementation != "taube" else "")
    return [row.implementation, row.loadgen, str(row.concurrency), number(row.accept_median),
            number(row.end_to_end_median),
            f"{row.end_to_end_low:.0f}–{row.end_to_end_high:.0f}"
            if row.end_to_end_low and row.end_to_end_high else "-",
            f"{row.runs}/{row.requested_runs}", ratio, number(row.relay_cpu_ms_per_message, ".2f"),
            row.notes]


def print_table(rows: list[Row], title: str) -> None:
    cells = [HEADERS, *(table_cells(row) for row in rows)]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
        print(title)
        for line in cells:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        return
    table = Table(title=title)
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("implementation", "load generator",
                                                              "notes") else "right")
    for line in cells[1:]:
        table.add_row(*line)
    console = Console()
    console.width = max(console.width, 150)
    console.print(table)


def conditions(args: argparse.Namespace) -> dict[str, object]:
    from datetime import datetime, timezone
    import platform
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "taube_commit": command_output(["git", "rev-parse", "--short", "HEAD"]),
        # Uncommitted changes under src/ at the start: the commit alone does not say what ran.
        "taube_src_modified": bool(command_output(["git", "status", "--porcelain", "--", "src"])),
        "postfix": command_output(["postconf", "-d", "-h", "mail_version"]) or None,
        "messages": args.messages,
        "size": args.size,
        "runs": args.runs,
        "concurrency": args.concurrency,
        "loadgens": args.loadgens,
        "recipient": RECIPIENT,
    }


def write_json(path: Path, header: dict[str, object], skipped: dict[str, str],
               measurements: list[Measurement], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "conditions": header,
        "skipped": skipped,
        "summary": [asdict(row) for row in rows],
        "measurements": [asdict(m) | {"accept_rate": m.accept_rate,
                                      "end_to_end_rate": m.end_to_end_rate,
                                      "relay_cpu_share": m.relay_cpu_share,
                                      "relay_cpu_ms_per_message": m.relay_cpu_ms_per_message,
                                      "lost_or_extra": m.lost_or_extra, "clean": m.clean}
                         for m in measurements],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in csv_list(s)],
                        default=[1, 20], help="comma-separated client counts (default 1,20)")
    parser.add_argument("--only", type=lambda s: checked_choices(s, IMPLEMENTATIONS),
                        default=list(IMPLEMENTATIONS), help="relays: taube,postfix")
    parser.add_argument("--loadgens", type=lambda s: checked_choices(s, LOADGENS),
                        default=["smtp-source"], help="load generators: smtp-source,loadgen "
                                                      "(default smtp-source)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args()
    if args.runs < 1 or args.messages < 1 or min(args.concurrency, default=0) < 1:
        parser.error("--runs, --messages and --concurrency must be positive")
    return args


def main() -> int:
    args = parse_args()
    shutil.rmtree(LOGS, ignore_errors=True)  # logs of failed runs: only this run's
    header = conditions(args)
    print(f"{header['date']}: relay of {args.messages} x {args.size} B messages to "
          f"{RECIPIENT}, {args.runs} run(s), concurrency {args.concurrency}, "
          f"{header['cpus']} CPUs, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    measurements, skipped = run_all(args)
    rows = summarize(measurements)
    print_table(rows, f"SMTP relay to smtp-sink, durable queue, {args.size} B messages, "
                      f"{args.messages} per run, median of {args.runs}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason.splitlines()[0]}")
    write_json(args.json, header, skipped, measurements, rows)
    print(f"results written to {args.json}")
    if any(m.lost_or_extra for m in measurements):
        print("FAILURE: a sink did not receive exactly the acknowledged messages, or a queue "
              "kept some", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
