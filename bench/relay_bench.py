"""Submission and relay throughput: taube side by side with a private Postfix instance.

Each measurement starts Postfix's ``smtp-sink`` (the final hop, the remote MX on loopback:
accepts and discards, counting messages) and a fresh relay in a fresh directory, both on free
loopback ports; the relay forwards everything non-local to the sink (``relayhost =
[127.0.0.1]:SINK``). The built-in load generator logs in on each connection (AUTH PLAIN, the
same argon2id hash on both sides: Postfix asks a private Dovecot auth service) and sends a
bounded number of 1 KiB messages from ``sender@relay.bench.test`` for ``user@sink.test`` at a
given concurrency: mail submission (RFC 6409) to a remote domain.
Measured from the first connection: until the last ``250`` from the relay (accept rate) and
until the sink has received every message (end-to-end rate). Then the relay's queue must become
empty, and after the relay has stopped the sink must have counted exactly the acknowledged
messages: a lost or duplicated message is a failure, not a slow run. Runs are interleaved (run 1
of everything, then run 2, ...); the table shows medians and taube's rate divided by Postfix's.

Usage: relay_bench.py [--runs 3] [--messages 2000] [--concurrency 1,20] [--only taube,postfix]
                      [--loops uvloop,asyncio] [--workers 1,2] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (RESULTS_DIR, add_choices, add_concurrency, add_json, add_runs_messages_size,
                      add_taube_options, conditions, cpu_used, errors_note, exit_status, finish,
                      fresh_directory, group_by, implementations, keep_log, machine_now, median,
                      new_parser, poll, print_skipped, print_table, require_positive,
                      run_interleaved, run_smtp_load, taube_variants, variant_of, write_results)
from postfix_sasl import DovecotAuth
from profiling import Profile
from servers import (HOST, STOP_TIMEOUT, PostfixServer, ServerUnavailable, SmtpSinkServer,
                     TaubeServer, count_files, free_port, terminate)

RELAY_DOMAIN = "relay.bench.test"  # the relays' own (local) domain; the recipients are not in it
SENDER_USER = "sender"
SENDER = f"{SENDER_USER}@{RELAY_DOMAIN}"  # the login, and the MAIL FROM it may use
PASSWORD = "bench-password"
SINK_DOMAIN = "sink.test"
RECIPIENT = f"user@{SINK_DOMAIN}"
RESULTS = RESULTS_DIR / "relay-latest.json"
LOGS = RESULTS_DIR / "relay-logs"
PEERS = ("postfix",)
LOADGEN = "loadgen"  # smtp-source cannot log in
FORWARD_TIMEOUT = 300.0  # after the last 250: until the sink has every message
DRAIN_TIMEOUT = 60.0  # after that: until the relay's queue is empty
SINK_SETTLE = 0.3  # after the relay stopped: late (duplicate) deliveries would show by then


# --- the final hop -----------------------------------------------------------------------------
class Sink(SmtpSinkServer):
    """``smtp-sink -c`` on a free loopback port; a thread reads its running message counter
    from its standard output (its standard error goes to the log)."""

    COUNTER = re.compile(rb"mesg=(\d+)")
    SESSIONS = re.compile(rb"sess=(\d+)")
    options = ("-c",)
    pipe_stdout = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.count = 0
        self.sessions = 0  # SMTP sessions the sink has seen end (readiness probes included)
        self.target: int | None = None
        self.reached_at: float | None = None  # perf_counter() when count first reached target
        self._reached = threading.Event()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def started(self) -> None:
        self._reader = threading.Thread(target=self._read, name="smtp-sink counter", daemon=True)
        self._reader.start()

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
class TaubeRelay(TaubeServer):
    """``taube serve``: [submission] on the measured port (AUTH without TLS: loopback), [smtp] on
    another, the rest off, relayhost = the sink, no trusted network (AUTH is what permits
    relaying); the one user is the sender."""

    domain = RELAY_DOMAIN
    users = (SENDER_USER,)

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.sink_port = sink_port
        super().__init__(workdir)
        self.queue = workdir / "var" / "queue"

    def config_text(self) -> str:
        return (f'hostname = "{self.domain}"\n'
                'data_dir = "var"\n'
                f'domains = ["{self.domain}"]\n'
                "trusted_networks = []\n"
                "[smtp]\n"
                f'listen = ["{HOST}:{free_port()}"]\n'
                "max_connections = 500\n"
                "max_connections_per_client = 500\n"
                "[submission]\n"
                f'listen = ["{HOST}:{self.port}"]\n'
                "[smtps]\nlisten = []\n"
                "[pop3]\nlisten = []\n"
                "[pop3s]\nlisten = []\n"
                "[auth]\nrequire_tls = false\n"
                "[delivery]\n"
                f'relayhost = "[{HOST}]:{self.sink_port}"\n')

    def other_sections(self) -> str:
        return ""  # all in config_text: [submission] is the measured listener

    def queued_count(self) -> int:
        """Envelopes plus data files still in the queue."""
        return count_files(self.queue / "envelopes") + count_files(self.queue / "messages")


class PostfixRelay(PostfixServer):
    """A private Postfix instance with ``relayhost = [127.0.0.1]:SINK`` and the smtp(8) client,
    relaying for SASL-authenticated clients only (a private Dovecot auth service)."""

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.auth = DovecotAuth(workdir, SENDER, PASSWORD)
        super().__init__(workdir, RELAY_DOMAIN, relayhost=f"[{HOST}]:{sink_port}",
                         settings=self.auth.postfix_settings())

    def start(self) -> None:
        self.auth.start()
        try:
            super().start()
        except ServerUnavailable:
            self.auth.stop()
            raise

    def stop(self) -> None:
        super().stop()
        self.auth.stop()


def new_relay(args: argparse.Namespace, name: str, workdir: Path,
              sink_port: int) -> TaubeRelay | PostfixRelay:
    variant = variant_of(args, name)
    if variant is None:
        return PostfixRelay(workdir, sink_port)
    relay = variant.apply(TaubeRelay(workdir, sink_port))
    assert isinstance(relay, TaubeRelay)
    return relay


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
    relay_cpu_seconds: float | None = None  # all its processes, until the queue was empty
    peak_rss_mb: float | None = None
    event_loop: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    server_log: str | None = None
    profile: str | None = None

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
        return (self.run > 0 and self.accepted == self.messages and not self.errors
                and not self.lost_or_extra and self.end_to_end_seconds is not None
                and self.queue_left == 0)


def measure(relay: TaubeRelay | PostfixRelay, sink: Sink, loadgen_name: str, concurrency: int,
            run: int, messages: int, size: int) -> Measurement:
    m = Measurement(relay.name, loadgen_name, concurrency, run, messages)
    cpu_before = relay.cpu_seconds()
    began = time.perf_counter()
    outcome = run_smtp_load(loadgen_name, relay.port, messages, concurrency, size, SENDER,
                            RECIPIENT, auth=(SENDER, PASSWORD))
    m.accepted, m.accept_seconds, m.errors = outcome.accepted, outcome.seconds, outcome.errors
    if outcome.accepted:
        sink.expect(outcome.accepted)
        reached = sink.wait(FORWARD_TIMEOUT)
        if reached is None:
            m.errors[f"sink short of {outcome.accepted} after {FORWARD_TIMEOUT:.0f} s"] = 1
        else:
            m.end_to_end_seconds = reached - began
    m.queue_left, m.drained_seconds = poll(relay.queued_count, lambda left: left == 0,
                                           DRAIN_TIMEOUT, began)
    m.relay_cpu_seconds = cpu_used(cpu_before, relay.cpu_seconds())
    memory = relay.memory()
    m.peak_rss_mb = memory.peak_rss_mb if memory is not None else None
    return m


def measure_fresh(args: argparse.Namespace, implementation: str, concurrency: int,
                  run: int) -> Measurement:
    """Fresh sink and relay in a fresh directory; measure once; stop both; remove it."""
    loadgen_name, messages, size = LOADGEN, args.messages, args.size
    with fresh_directory(f"taube-relay-bench-{implementation}-") as workdir:
        sink = Sink(workdir)
        sink.start()
        time.sleep(0.05)  # let the counter thread see the readiness probe's session
        probes = sink.sessions
        profile = Profile(f"relay-c{concurrency}-{implementation}") if run == 0 else None
        try:
            relay = new_relay(args, implementation, workdir, sink.port)
            if profile is not None and isinstance(relay, TaubeRelay):
                relay.env.update(profile.env())
            relay.start()
            try:
                if profile is not None and relay.root_pid is not None:
                    profile.attach(relay.root_pid)
                m = measure(relay, sink, loadgen_name, concurrency, run, messages, size)
                if profile is not None:
                    profile.detach()
            finally:
                relay.stop()
            if isinstance(relay, TaubeRelay):
                m.event_loop = relay.event_loop()
            if profile is not None:
                written = profile.write()
                m.profile = str(written) if written else None
            time.sleep(SINK_SETTLE)
            m.sink_count = sink.count
            m.sink_sessions = sink.sessions - probes
        finally:
            sink.stop()
        if m.errors or m.lost_or_extra or not m.clean:
            stem = f"{implementation}-{loadgen_name}-c{concurrency}-run{run}"
            m.server_log = keep_log(relay.log, LOGS, stem)
        return m


def describe(m: Measurement) -> str:
    accept = f"{m.accept_rate:7.1f}" if m.accept_rate else "   -   "
    e2e = f"{m.end_to_end_rate:7.1f}" if m.end_to_end_rate else "   -   "
    text = (f"[run {m.run}] {m.implementation:<17} c={m.concurrency:<3} "
            f"accept {accept} msgs/s, end-to-end {e2e} msgs/s; "
            f"accepted {'-' if m.accepted is None else m.accepted}/{m.messages}, "
            f"sink {'-' if m.sink_count is None else m.sink_count} "
            f"over {'-' if m.sink_sessions is None else m.sink_sessions} connection(s), "
            f"queue left {'-' if m.queue_left is None else m.queue_left}")
    if m.drained_seconds:
        text += f", drained at {m.drained_seconds:.2f} s"
    if m.relay_cpu_share is not None and m.relay_cpu_ms_per_message is not None:
        text += f", relay CPU {m.relay_cpu_share:.0%} ({m.relay_cpu_ms_per_message:.2f} ms/msg)"
    if m.peak_rss_mb is not None:
        text += f", peak RSS {m.peak_rss_mb:.0f} MB"
    if m.event_loop:
        text += f", {m.event_loop}"
    if m.errors:
        text += f", errors {m.errors}"
    if m.lost_or_extra:
        text += "  <-- SINK COUNT OR QUEUE DOES NOT MATCH THE 250s"
    if m.server_log:
        text += f"\n    relay log: {m.server_log}"
    if m.profile:
        text += f"\n    profile: {m.profile}"
    return text


def skip_as(implementation: str, exc: ServerUnavailable) -> str:
    """Without smtp-sink nothing can be measured; otherwise skip the relay."""
    return "smtp-sink" if "smtp-sink is not installed" in str(exc) else implementation


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
    peak_rss_mb: float | None = None
    notes: str = ""


def summarize(measurements: list[Measurement]) -> list[Row]:
    timed = [m for m in measurements if m.run > 0]
    groups = group_by(timed, lambda m: (m.implementation, m.loadgen, m.concurrency))
    rows = []
    for (implementation, loadgen_name, concurrency), group in groups.items():
        valid = [m for m in group if m.clean]
        accept = [m.accept_rate for m in valid if m.accept_rate]
        e2e = [m.end_to_end_rate for m in valid if m.end_to_end_rate]
        cpu = [m.relay_cpu_ms_per_message for m in valid if m.relay_cpu_ms_per_message]
        rss = [m.peak_rss_mb for m in valid if m.peak_rss_mb]
        notes = []
        if bad := sum(m.lost_or_extra for m in group):
            notes.append(f"LOST/EXTRA/STUCK in {bad} run(s)")
        if errors := errors_note(group):
            notes.append(errors)
        rows.append(Row(implementation, loadgen_name, concurrency, median(accept), median(e2e),
                        min(e2e, default=None), max(e2e, default=None), len(valid), len(group),
                        relay_cpu_ms_per_message=median(cpu), peak_rss_mb=median(rss),
                        notes="; ".join(notes)))
    postfix = {r.concurrency: r for r in rows if r.implementation == "postfix"}
    for row in rows:
        peer = postfix.get(row.concurrency)
        if row.implementation.startswith("taube") and peer is not None:
            if row.accept_median and peer.accept_median:
                row.accept_ratio = row.accept_median / peer.accept_median
            if row.end_to_end_median and peer.end_to_end_median:
                row.end_to_end_ratio = row.end_to_end_median / peer.end_to_end_median
    # stable: within a concurrency the implementations stay in the order they were measured
    return sorted(rows, key=lambda r: r.concurrency)


HEADERS = ["implementation", "concurrency", "accept msgs/s", "end-to-end msgs/s", "e2e min–max",
           "runs", "÷ Postfix (accept / e2e)", "CPU ms/msg", "peak RSS MB", "notes"]


def table_cells(row: Row) -> list[str]:
    def number(value: float | None, fmt: str = ".1f") -> str:
        return format(value, fmt) if value else "-"

    ratio = (f"{number(row.accept_ratio, '.2f')} / {number(row.end_to_end_ratio, '.2f')}"
             if row.implementation.startswith("taube") else "")
    return [row.implementation, str(row.concurrency), number(row.accept_median),
            number(row.end_to_end_median),
            f"{row.end_to_end_low:.0f}–{row.end_to_end_high:.0f}"
            if row.end_to_end_low and row.end_to_end_high else "-",
            f"{row.runs}/{row.requested_runs}", ratio, number(row.relay_cpu_ms_per_message, ".2f"),
            number(row.peak_rss_mb, ".0f"), row.notes]


def derived(m: Measurement) -> dict[str, object]:
    """What the JSON file adds to each measurement's fields."""
    return {"accept_rate": m.accept_rate, "end_to_end_rate": m.end_to_end_rate,
            "relay_cpu_share": m.relay_cpu_share,
            "relay_cpu_ms_per_message": m.relay_cpu_ms_per_message,
            "lost_or_extra": m.lost_or_extra, "clean": m.clean}


def parse_args() -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_runs_messages_size(parser, messages=2000, messages_help="messages per run", size=1024)
    add_concurrency(parser, [1, 20])
    add_choices(parser, "--only", ["taube", *PEERS], "relays: taube,postfix")
    add_taube_options(parser)
    add_json(parser, RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.messages = 1, 300
    require_positive(parser, args)
    args.variants = taube_variants(args)
    return args


def main() -> int:
    args = parse_args()
    shutil.rmtree(LOGS, ignore_errors=True)  # logs of failed runs: only this run's
    header = conditions(args, messages=args.messages, size=args.size,
                        concurrency=args.concurrency, loadgen=LOADGEN, sender=SENDER,
                        recipient=RECIPIENT)
    print(f"{header['date']}: submission with AUTH of {args.messages} x {args.size} B messages "
          f"to {RECIPIENT}, {args.runs} run(s), concurrency {args.concurrency}, "
          f"{machine_now(header)}", file=sys.stderr)
    measurements, skipped = run_interleaved(
        args.runs, args.concurrency, implementations(args, PEERS),
        lambda name, concurrency, run: measure_fresh(args, name, concurrency, run), describe,
        profile=args.profile, skip_as=skip_as, fatal={"smtp-sink"})
    finish(header)
    rows = summarize(measurements)
    print_table(f"Submission (AUTH) relayed to smtp-sink, durable queue, {args.size} B messages, "
                f"{args.messages} per run, median of {args.runs}",
                HEADERS, [table_cells(row) for row in rows], {"implementation", "notes"}, 150)
    print_skipped(skipped)
    write_results(args.json, header, skipped, measurements, rows, derived)
    failed = any(m.lost_or_extra for m in measurements)
    if failed:
        print("FAILURE: a sink did not receive exactly the acknowledged messages, or a queue "
              "kept some", file=sys.stderr)
    return exit_status(failed, skipped)


if __name__ == "__main__":
    sys.exit(main())
