"""SMTP throughput with durable Maildir delivery: taube side by side with peers.

Each measurement starts a fresh server in a fresh directory on a free loopback port, sends a
bounded number of 1 KiB messages at a given concurrency with one load generator, checks that
the Maildir holds exactly as many messages as were acknowledged with 250, and stops the server.
Runs are interleaved (run 1 of everything, then run 2, ...) so drift on a shared machine hits
every implementation alike; the table shows medians and taube's rate divided by each peer's.

Usage: smtp_bench.py [--runs 3] [--messages 1000] [--concurrency 1,50]
                     [--only taube,aiosmtpd,smtp-sink,postfix] [--loadgens loadgen,smtp-source]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field

from benchlib import (LOADGENS, RESULTS_DIR, add_choices, add_concurrency, add_json,
                      add_ratios, add_runs_messages_size, conditions, cpu_used, errors_note,
                      fresh_directory, group_by, keep_log, machine_now, median, new_parser,
                      poll, postfix_version, print_skipped, print_table, require_positive,
                      run_interleaved, run_smtp_load, write_results)
from servers import SERVERS, Server

RESULTS = RESULTS_DIR / "latest.json"
LOGS = RESULTS_DIR / "logs"
DELIVERY_TIMEOUT = 120.0


@dataclass
class Measurement:
    implementation: str
    loadgen: str
    concurrency: int
    run: int
    messages: int
    accepted: int | None = None
    seconds: float = 0.0
    stored: int | None = None
    delivered_seconds: float | None = None
    server_cpu_seconds: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    server_log: str | None = None

    @property
    def rate(self) -> float | None:
        return self.accepted / self.seconds if self.accepted and self.seconds > 0 else None

    @property
    def delivered_rate(self) -> float | None:
        if self.stored and self.delivered_seconds:
            return self.stored / self.delivered_seconds
        return None

    @property
    def server_cpu_share(self) -> float | None:
        """The server's CPU time over the load's wall time: 1.0 is one core kept busy."""
        if self.server_cpu_seconds is None or self.seconds <= 0:
            return None
        return self.server_cpu_seconds / self.seconds

    @property
    def server_cpu_ms_per_message(self) -> float | None:
        if self.server_cpu_seconds is None or not self.accepted:
            return None
        return 1000 * self.server_cpu_seconds / self.accepted

    @property
    def mismatch(self) -> bool:
        """The Maildir does not hold exactly the acknowledged messages."""
        return None not in (self.stored, self.accepted) and self.stored != self.accepted

    @property
    def clean(self) -> bool:
        """Every message accepted, no error, Maildir matching: the run counts in the medians."""
        return self.accepted == self.messages and not self.errors and not self.mismatch


@dataclass
class Row:
    implementation: str
    loadgen: str
    concurrency: int
    median: float | None
    low: float | None
    high: float | None
    runs: int
    requested_runs: int
    ratio: float | None = None
    notes: str = ""


def measure(server: Server, loadgen: str, concurrency: int, run: int, messages: int,
            size: int) -> Measurement:
    m = Measurement(server.name, loadgen, concurrency, run, messages)
    cpu_before = server.cpu_seconds()
    began = time.perf_counter()
    outcome = run_smtp_load(loadgen, server.port, messages, concurrency, size)
    m.server_cpu_seconds = cpu_used(cpu_before, server.cpu_seconds())
    m.accepted, m.seconds, m.errors = outcome.accepted, outcome.seconds, outcome.errors
    if server.delivers_later and outcome.accepted:
        # Delivered after the 250s: poll the Maildir until all have landed.
        m.stored, m.delivered_seconds = poll(
            server.stored_count, lambda stored: stored is None or stored >= outcome.accepted,
            DELIVERY_TIMEOUT, began)
    else:
        m.stored = server.stored_count()
    return m


def measure_fresh(implementation: str, loadgen: str, concurrency: int, run: int, messages: int,
                  size: int) -> Measurement:
    """Starts a fresh server in a fresh directory, measures once, stops it and removes it."""
    with fresh_directory(f"taube-bench-{implementation}-") as workdir:
        server = SERVERS[implementation](workdir)
        server.start()
        try:
            m = measure(server, loadgen, concurrency, run, messages, size)
        finally:
            server.stop()
        if m.errors or m.mismatch:
            stem = f"{implementation}-{loadgen}-c{concurrency}-run{run}"
            m.server_log = keep_log(server.log, LOGS, stem)
        return m


def describe(m: Measurement) -> str:
    rate = f"{m.rate:8.1f} msgs/s" if m.rate else "    failed    "
    text = (f"[run {m.run}] {m.implementation:<9} {m.loadgen:<11} c={m.concurrency:<3} {rate}"
            f"  accepted {'-' if m.accepted is None else m.accepted}/{m.messages}")
    if m.stored is not None:
        text += f", stored {m.stored}"
    if m.delivered_rate:
        text += f", delivered {m.delivered_rate:.1f} msgs/s"
    if m.server_cpu_share is not None and m.server_cpu_ms_per_message is not None:
        text += (f", server CPU {m.server_cpu_share:.0%} "
                 f"({m.server_cpu_ms_per_message:.2f} ms/msg)")
    if m.errors:
        text += f", errors {m.errors}"
    if m.mismatch:
        text += "  <-- MAILDIR DOES NOT MATCH THE 250s"
    if m.server_log:
        text += f"\n    server log: {m.server_log}"
    return text


def median_row(label: str, group: list[Measurement], rates: list[float]) -> Row:
    first = group[0]
    notes = []
    if mismatches := sum(m.mismatch for m in group):
        notes.append(f"MAILDIR MISMATCH in {mismatches} run(s)")
    if errors := errors_note(group):
        notes.append(errors)
    return Row(label, first.loadgen, first.concurrency, median(rates), min(rates, default=None),
               max(rates, default=None), len(rates), len(group), notes="; ".join(notes))


def summarize(measurements: list[Measurement]) -> list[Row]:
    groups = group_by(measurements, lambda m: (m.implementation, m.loadgen, m.concurrency))
    rows = []
    for (implementation, _, _), group in groups.items():
        valid = [m for m in group if m.clean]
        accepted = [m.rate for m in valid if m.rate]
        if implementation == "postfix":
            delivered = [m.delivered_rate for m in valid if m.delivered_rate]
            rows.append(median_row("postfix (accepted)", group, accepted))
            rows.append(median_row("postfix (delivered)", group, delivered))
        else:
            rows.append(median_row(implementation, group, accepted))
    # ratio = taube's median / the peer's median for the same load generator and concurrency
    add_ratios(rows, lambda r: (r.loadgen, r.concurrency), {"ratio": "median"})
    return sorted(rows, key=lambda r: (r.concurrency, r.loadgen, r.implementation != "taube"))


def table_cells(row: Row) -> list[str]:
    return [row.implementation, row.loadgen, str(row.concurrency),
            f"{row.median:.1f}" if row.median else "-",
            f"{row.low:.0f}–{row.high:.0f}" if row.low and row.high else "-",
            f"{row.runs}/{row.requested_runs}",
            f"{row.ratio:.2f}" if row.ratio else "-", row.notes]


HEADERS = ["implementation", "load generator", "concurrency", "msgs/s (median)", "min–max",
           "runs", "taube ÷ peer", "notes"]
LEFT_HEADERS = {"implementation", "load generator", "notes"}


def derived(m: Measurement) -> dict[str, object]:
    """What the JSON file adds to each measurement's fields."""
    return {"rate": m.rate, "delivered_rate": m.delivered_rate,
            "server_cpu_share": m.server_cpu_share,
            "server_cpu_ms_per_message": m.server_cpu_ms_per_message, "mismatch": m.mismatch}


def parse_args() -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_runs_messages_size(parser, messages=1000, messages_help="messages per run", size=1024)
    add_concurrency(parser, [1, 50])
    add_choices(parser, "--only", list(SERVERS), f"implementations: {','.join(SERVERS)}")
    add_choices(parser, "--loadgens", LOADGENS, f"load generators: {','.join(LOADGENS)}")
    add_json(parser, RESULTS)
    args = parser.parse_args()
    require_positive(parser, args)
    return args


def main() -> int:
    args = parse_args()
    shutil.rmtree(LOGS, ignore_errors=True)  # logs of failed runs: only this run's
    header = conditions(postfix=postfix_version(), messages=args.messages, size=args.size,
                        runs=args.runs, concurrency=args.concurrency)
    print(f"{header['date']}: {args.messages} x {args.size} B messages, {args.runs} run(s), "
          f"concurrency {args.concurrency}, {machine_now(header)}", file=sys.stderr)
    measurements, skipped = run_interleaved(args, measure_fresh, describe)
    rows = summarize(measurements)
    print_table(f"SMTP to durable Maildir, {args.size} B messages, "
                f"{args.messages} per run, median of {args.runs}",
                HEADERS, [table_cells(row) for row in rows], LEFT_HEADERS, 140)
    print_skipped(skipped)
    write_results(args.json, header, skipped, measurements, rows, derived)
    if any(m.mismatch for m in measurements):
        print("FAILURE: a Maildir did not hold exactly the acknowledged messages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
