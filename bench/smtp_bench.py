"""SMTP throughput with durable Maildir delivery: taube side by side with Postfix and aiosmtpd.

Three cases, as the performance targets name them: 2000 messages of 1 KiB over 1 session, 5000
of 1 KiB over 50 sessions, 500 of 100 KiB over 10 sessions. Each measurement starts a fresh
server in a fresh directory on a free loopback port, sends the case's messages with one load
generator, and checks that the Maildir holds exactly the acknowledged messages, each whole and
none twice; then it stops the server. taube runs as one or more variants (event loop, workers).
Runs are interleaved (run 1 of everything, then run 2, ...) so drift on a shared machine hits
every implementation alike; the table shows medians, the server's CPU milliseconds per message
(all its processes), its peak resident memory, and taube's rate divided by each peer's.

Usage: smtp_bench.py [--runs 3] [--cases 1k-c1,1k-c50,100k-c10] [--only taube,aiosmtpd,postfix]
                     [--loadgens smtp-source] [--loops uvloop,asyncio] [--workers 1,2]
                     [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field

import loadgen as builtin_loadgen
from benchlib import (LOADGENS, RESULTS_DIR, add_choices, add_json, add_taube_options, conditions,
                      cpu_used, errors_note, exit_status, finish, fresh_directory, group_by,
                      implementations, keep_log, machine_now, median, new_parser, poll,
                      print_skipped, print_table, run_interleaved, run_smtp_load,
                      smtp_source_skipped, taube_variants, variant_of, write_results)
from maildir_check import MaildirCheck, check_maildir, expected_body_payload
from profiling import Profile
from servers import SERVERS, PostfixServer, ProcessServer, TaubeServer

RESULTS = RESULTS_DIR / "latest.json"
LOGS = RESULTS_DIR / "logs"
DELIVERY_TIMEOUT = 300.0
PEERS = ("aiosmtpd", "postfix", "smtp-sink")


@dataclass(frozen=True)
class Case:
    name: str
    size: int
    messages: int
    concurrency: int


CASES = {c.name: c for c in (Case("1k-c1", 1024, 2000, 1), Case("1k-c50", 1024, 5000, 50),
                             Case("100k-c10", 100 * 1024, 500, 10))}
QUICK_SHARE = 10  # --quick sends a tenth of each case's messages


@dataclass
class Measurement:
    implementation: str
    case: str
    loadgen: str
    concurrency: int
    size: int
    run: int
    messages: int
    accepted: int | None = None
    seconds: float = 0.0
    stored: int | None = None
    torn: int = 0
    duplicates: int = 0
    delivered_seconds: float | None = None
    server_cpu_seconds: float | None = None
    peak_rss_mb: float | None = None
    processes: int | None = None
    event_loop: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    server_log: str | None = None
    profile: str | None = None

    @property
    def rate(self) -> float | None:
        return self.accepted / self.seconds if self.accepted and self.seconds > 0 else None

    @property
    def delivered_rate(self) -> float | None:
        if self.stored and self.delivered_seconds:
            return self.stored / self.delivered_seconds
        return None

    @property
    def server_cpu_ms_per_message(self) -> float | None:
        if self.server_cpu_seconds is None or not self.accepted:
            return None
        return 1000 * self.server_cpu_seconds / self.accepted

    @property
    def problems(self) -> list[str]:
        """Lost, extra, torn or duplicated messages against the 250s."""
        if self.stored is None:
            return []
        return MaildirCheck(self.stored, self.torn, self.duplicates).problems(self.accepted)

    @property
    def clean(self) -> bool:
        """Every message accepted, no error, the Maildir right, not a profiled run."""
        return (self.run > 0 and self.accepted == self.messages and not self.errors
                and not self.problems)


def measure(server: ProcessServer | PostfixServer, case: Case, loadgen: str, run: int,
            messages: int) -> Measurement:
    m = Measurement(server.name, case.name, loadgen, case.concurrency, case.size, run, messages)
    cpu_before = server.cpu_seconds()
    began = time.perf_counter()
    outcome = run_smtp_load(loadgen, server.port, messages, case.concurrency, case.size)
    m.accepted, m.seconds, m.errors = outcome.accepted, outcome.seconds, outcome.errors
    if server.delivers_later and outcome.accepted:
        # Delivered after the 250s: poll the Maildir until all have landed.
        m.stored, m.delivered_seconds = poll(
            server.stored_count, lambda stored: stored is None or stored >= outcome.accepted,
            DELIVERY_TIMEOUT, began)
    # Postfix's CPU until its last delivery; the others' until their last 250.
    m.server_cpu_seconds = cpu_used(cpu_before, server.cpu_seconds())
    memory = server.memory()
    if memory is not None:
        m.peak_rss_mb, m.processes = memory.peak_rss_mb, memory.processes
    return m


def check(m: Measurement, server: ProcessServer | PostfixServer) -> None:
    """After the clock: count, torn and duplicate checks of what the Maildir holds."""
    template = builtin_loadgen.build_message(m.size)[0] if m.loadgen == "loadgen" else None
    payload = expected_body_payload(m.loadgen, template, m.size)
    folder = server.maildir_new() if isinstance(server, ProcessServer) else \
        server.instance.maildir_new
    result = check_maildir(folder, payload, unique_ids=m.loadgen == "loadgen")
    if result is not None:
        m.stored, m.torn, m.duplicates = result.count, result.torn, result.duplicates


def start_server(name: str, workdir, args: argparse.Namespace) -> ProcessServer | PostfixServer:
    variant = variant_of(args, name)
    if variant is not None:
        server = variant.apply(TaubeServer(workdir))
        assert isinstance(server, TaubeServer)
        return server
    return SERVERS[name](workdir)


def measure_fresh(args: argparse.Namespace, name: str, cell: tuple[Case, str],
                  run: int) -> Measurement:
    """Starts a fresh server in a fresh directory, measures once, stops it and removes it."""
    case, loadgen = cell
    messages = case.messages // QUICK_SHARE if args.quick else case.messages
    with fresh_directory(f"taube-bench-{name}-") as workdir:
        server = start_server(name, workdir, args)
        profile = Profile(f"smtp-{case.name}-{name}") if run == 0 else None
        if profile is not None and isinstance(server, ProcessServer):
            server.env.update(profile.env())
        server.start()
        try:
            if profile is not None and server.root_pid is not None:
                profile.attach(server.root_pid)
            m = measure(server, case, loadgen, run, messages)
            if profile is not None:
                profile.detach()
        finally:
            server.stop()
        check(m, server)
        if isinstance(server, TaubeServer):
            m.event_loop = server.event_loop()
        if profile is not None:
            written = profile.write()
            m.profile = str(written) if written else None
        if m.errors or m.problems:
            stem = f"{name}-{case.name}-{loadgen}-run{run}"
            m.server_log = keep_log(server.log, LOGS, stem)
        return m


def describe(m: Measurement) -> str:
    rate = f"{m.rate:8.1f} msgs/s" if m.rate else "    failed    "
    text = (f"[run {m.run}] {m.case:<8} {m.implementation:<18} {m.loadgen:<11} {rate}"
            f"  accepted {'-' if m.accepted is None else m.accepted}/{m.messages}, "
            f"stored {'-' if m.stored is None else m.stored}")
    if m.delivered_rate:
        text += f", delivered {m.delivered_rate:.1f} msgs/s"
    if m.server_cpu_ms_per_message is not None:
        text += f", CPU {m.server_cpu_ms_per_message:.2f} ms/msg"
    if m.peak_rss_mb is not None:
        text += f", peak RSS {m.peak_rss_mb:.0f} MB in {m.processes} process(es)"
    if m.event_loop:
        text += f", {m.event_loop}"
    if m.errors:
        text += f", errors {m.errors}"
    if m.problems:
        text += f"  <-- MAILDIR: {', '.join(m.problems)}"
    if m.server_log:
        text += f"\n    server log: {m.server_log}"
    if m.profile:
        text += f"\n    profile: {m.profile}"
    return text


# --- summary -----------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    implementation: str
    loadgen: str
    median: float | None
    low: float | None
    high: float | None
    cpu_ms_per_message: float | None
    peak_rss_mb: float | None
    runs: int
    requested_runs: int
    vs_postfix: float | None = None  # taube: its median / Postfix's delivered median
    vs_aiosmtpd: float | None = None
    notes: str = ""


def median_row(label: str, group: list[Measurement], rates: list[float]) -> Row:
    first = group[0]
    valid = [m for m in group if m.clean]
    notes = []
    if bad := [m for m in group if m.problems]:
        notes.append(f"MAILDIR WRONG in {len(bad)} run(s)")
    if errors := errors_note(group):
        notes.append(errors)
    cpu = [m.server_cpu_ms_per_message for m in valid if m.server_cpu_ms_per_message]
    rss = [m.peak_rss_mb for m in valid if m.peak_rss_mb]
    return Row(first.case, label, first.loadgen, median(rates), min(rates, default=None),
               max(rates, default=None), median(cpu), median(rss), len(rates), len(group),
               notes="; ".join(notes))


def summarize(measurements: list[Measurement]) -> list[Row]:
    timed = [m for m in measurements if m.run > 0]
    groups = group_by(timed, lambda m: (m.case, m.loadgen, m.implementation))
    rows = []
    for (_, _, implementation), group in groups.items():
        valid = [m for m in group if m.clean]
        accepted = [m.rate for m in valid if m.rate]
        if implementation == "postfix":
            delivered = [m.delivered_rate for m in valid if m.delivered_rate]
            rows.append(median_row("postfix (accepted)", group, accepted))
            rows.append(median_row("postfix (delivered)", group, delivered))
        else:
            rows.append(median_row(implementation, group, accepted))
    peers = {(r.case, r.loadgen, r.implementation): r.median for r in rows}
    for row in rows:
        if row.implementation.startswith("taube") and row.median:
            postfix = peers.get((row.case, row.loadgen, "postfix (delivered)"))
            aiosmtpd = peers.get((row.case, row.loadgen, "aiosmtpd"))
            row.vs_postfix = row.median / postfix if postfix else None
            row.vs_aiosmtpd = row.median / aiosmtpd if aiosmtpd else None
    order = list(CASES)
    return sorted(rows, key=lambda r: (order.index(r.case), r.loadgen,
                                       not r.implementation.startswith("taube")))


HEADERS = ["case", "implementation", "load generator", "msgs/s (median)", "min–max", "runs",
           "CPU ms/msg", "peak RSS MB", "÷ Postfix delivered", "÷ aiosmtpd", "notes"]
LEFT_HEADERS = {"case", "implementation", "load generator", "notes"}


def number(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value else "-"


def table_cells(row: Row) -> list[str]:
    return [row.case, row.implementation, row.loadgen, number(row.median, ".1f"),
            f"{row.low:.0f}–{row.high:.0f}" if row.low and row.high else "-",
            f"{row.runs}/{row.requested_runs}", number(row.cpu_ms_per_message, ".2f"),
            number(row.peak_rss_mb, ".0f"), number(row.vs_postfix, ".2f"),
            number(row.vs_aiosmtpd, ".2f"), row.notes]


def derived(m: Measurement) -> dict[str, object]:
    """What the JSON file adds to each measurement's fields."""
    return {"rate": m.rate, "delivered_rate": m.delivered_rate,
            "server_cpu_ms_per_message": m.server_cpu_ms_per_message, "problems": m.problems}


def parse_args() -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    add_choices(parser, "--cases", list(CASES), f"cases: {','.join(CASES)}")
    add_choices(parser, "--only", ["taube", *PEERS], "implementations: taube," + ",".join(PEERS),
                default=["taube", "aiosmtpd", "postfix"])
    add_choices(parser, "--loadgens", LOADGENS, "load generators: smtp-source,loadgen "
                "(default smtp-source)", default=["smtp-source"])
    add_taube_options(parser)
    add_json(parser, RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        parser.error("--runs must be positive")
    args.variants = taube_variants(args)
    return args


def main() -> int:
    args = parse_args()
    shutil.rmtree(LOGS, ignore_errors=True)  # logs of failed runs: only this run's
    header = conditions(args, cases=[vars(CASES[name]) for name in args.cases],
                        loadgens=args.loadgens)
    print(f"{header['date']}: SMTP cases {', '.join(args.cases)}, {args.runs} run(s)"
          f"{' (quick)' if args.quick else ''}, {machine_now(header)}", file=sys.stderr)
    skipped = smtp_source_skipped(args.loadgens)
    cells = [(CASES[name], lg) for name in args.cases for lg in args.loadgens if lg not in skipped]
    measurements, more = run_interleaved(
        args.runs, cells, implementations(args, PEERS),
        lambda name, cell, run: measure_fresh(args, name, cell, run), describe,
        profile=args.profile)
    skipped |= more
    finish(header)
    rows = summarize(measurements)
    print_table(f"SMTP to durable Maildir, median of {args.runs} run(s)", HEADERS,
                [table_cells(row) for row in rows], LEFT_HEADERS, 160)
    print_skipped(skipped)
    write_results(args.json, header, skipped, measurements, rows, derived)
    failed = any(m.problems for m in measurements)
    if failed:
        print("FAILURE: a Maildir did not hold exactly the acknowledged messages, each whole "
              "and once", file=sys.stderr)
    return exit_status(failed, skipped)


if __name__ == "__main__":
    sys.exit(main())
