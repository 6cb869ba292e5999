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
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from loadgen import RECIPIENT, SENDER, run_load
from servers import HOST, REPO_DIR, SERVERS, Server, ServerUnavailable

LOADGENS = ("loadgen", "smtp-source")
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
LOGS = RESULTS.parent / "logs"
MEASUREMENT_TIMEOUT = 600.0
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


@dataclass
class LoadOutcome:
    accepted: int | None
    seconds: float
    errors: dict[str, int]


def run_builtin_loadgen(port: int, messages: int, concurrency: int, size: int) -> LoadOutcome:
    async def bounded() -> LoadOutcome:
        result = await asyncio.wait_for(run_load(HOST, port, messages, concurrency, size),
                                        MEASUREMENT_TIMEOUT)
        return LoadOutcome(result.accepted, result.seconds, dict(result.errors))

    try:
        return asyncio.run(bounded())
    except asyncio.TimeoutError:
        return LoadOutcome(None, MEASUREMENT_TIMEOUT, {"load timed out": 1})


def smtp_source_path() -> str | None:
    found = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    return found if Path(found).exists() else None


def run_smtp_source(port: int, messages: int, concurrency: int, size: int) -> LoadOutcome:
    """smtp-source with -d (each of its connections carries many messages), timed as a whole.

    It stops at the first unexpected reply, so a zero exit status means every message got 250.
    """
    command = [str(smtp_source_path()), "-d", "-s", str(concurrency), "-m", str(messages),
               "-l", str(size), "-f", SENDER, "-t", RECIPIENT, f"{HOST}:{port}"]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=MEASUREMENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return LoadOutcome(None, MEASUREMENT_TIMEOUT, {"smtp-source timed out": 1})
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        message = (done.stderr or done.stdout).decode(errors="replace").strip()[-200:]
        return LoadOutcome(None, seconds, {f"smtp-source exit {done.returncode}: {message}": 1})
    return LoadOutcome(messages, seconds, {})


LOAD_RUNNERS = {"loadgen": run_builtin_loadgen, "smtp-source": run_smtp_source}


def wait_delivered(server: Server, expected: int, began: float) -> tuple[int | None, float | None]:
    """For a server that delivers after acknowledging: poll the Maildir until all have landed."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        stored = server.stored_count()
        if stored is None or stored >= expected:
            return stored, time.perf_counter() - began
        if time.monotonic() > deadline:
            return stored, None
        time.sleep(0.01)


def measure(server: Server, loadgen: str, concurrency: int, run: int, messages: int,
            size: int) -> Measurement:
    m = Measurement(server.name, loadgen, concurrency, run, messages)
    cpu_before = server.cpu_seconds()
    began = time.perf_counter()
    outcome = LOAD_RUNNERS[loadgen](server.port, messages, concurrency, size)
    cpu_after = server.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        m.server_cpu_seconds = cpu_after - cpu_before
    m.accepted, m.seconds, m.errors = outcome.accepted, outcome.seconds, outcome.errors
    if server.delivers_later and outcome.accepted:
        m.stored, m.delivered_seconds = wait_delivered(server, outcome.accepted, began)
    else:
        m.stored = server.stored_count()
    return m


def measure_fresh(implementation: str, loadgen: str, concurrency: int, run: int, messages: int,
                  size: int) -> Measurement:
    """Starts a fresh server in a fresh directory, measures once, stops it and removes it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"taube-bench-{implementation}-"))
    try:
        server = SERVERS[implementation](workdir)
        server.start()
        try:
            m = measure(server, loadgen, concurrency, run, messages, size)
        finally:
            server.stop()
        if m.errors or m.mismatch:
            stem = f"{implementation}-{loadgen}-c{concurrency}-run{run}"
            m.server_log = keep_log(server.log, stem)
        return m
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.sync()  # the next measurement must not pay for this one's writeback


def keep_log(log: Path, stem: str) -> str | None:
    """Copies a failed run's server log next to the results, before its directory goes."""
    if not log.exists():
        return None
    kept = LOGS / f"{stem}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    return str(kept)


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


def run_all(args: argparse.Namespace) -> tuple[list[Measurement], dict[str, str]]:
    skipped: dict[str, str] = {}
    if "smtp-source" in args.loadgens and smtp_source_path() is None:
        skipped["smtp-source"] = "not installed (bash bench/install-peers.sh)"
    measurements: list[Measurement] = []
    for run in range(1, args.runs + 1):
        for concurrency in args.concurrency:
            for implementation in args.only:
                for loadgen in args.loadgens:
                    if implementation in skipped or loadgen in skipped:
                        continue
                    try:
                        m = measure_fresh(implementation, loadgen, concurrency, run,
                                          args.messages, args.size)
                    except ServerUnavailable as exc:
                        skipped[implementation] = str(exc)
                        print(f"skipping {implementation}: {exc}", file=sys.stderr, flush=True)
                        continue
                    measurements.append(m)
                    print(describe(m), file=sys.stderr, flush=True)
    return measurements, skipped


def median_row(label: str, group: list[Measurement], rates: list[float]) -> Row:
    first = group[0]
    errors = Counter[str]()
    for m in group:
        errors.update(m.errors)
    notes = []
    if mismatches := sum(m.mismatch for m in group):
        notes.append(f"MAILDIR MISMATCH in {mismatches} run(s)")
    if errors:
        notes.append(f"{sum(errors.values())} error(s)")
    return Row(label, first.loadgen, first.concurrency,
               statistics.median(rates) if rates else None, min(rates, default=None),
               max(rates, default=None), len(rates), len(group), notes="; ".join(notes))


def summarize(measurements: list[Measurement]) -> list[Row]:
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.implementation, m.loadgen, m.concurrency), []).append(m)
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
    add_ratios(rows)
    return sorted(rows, key=lambda r: (r.concurrency, r.loadgen, r.implementation != "taube"))


def add_ratios(rows: list[Row]) -> None:
    """ratio = taube's median / the peer's median for the same load generator and concurrency."""
    taube = {(r.loadgen, r.concurrency): r.median for r in rows if r.implementation == "taube"}
    for row in rows:
        reference = taube.get((row.loadgen, row.concurrency))
        if reference and row.median:
            row.ratio = reference / row.median


def table_cells(row: Row) -> list[str]:
    return [row.implementation, row.loadgen, str(row.concurrency),
            f"{row.median:.1f}" if row.median else "-",
            f"{row.low:.0f}–{row.high:.0f}" if row.low and row.high else "-",
            f"{row.runs}/{row.requested_runs}",
            f"{row.ratio:.2f}" if row.ratio else "-", row.notes]


HEADERS = ["implementation", "load generator", "concurrency", "msgs/s (median)", "min–max",
           "runs", "taube ÷ peer", "notes"]
NUMERIC_HEADERS = {"concurrency", "msgs/s (median)", "min–max", "runs", "taube ÷ peer"}


def print_table(rows: list[Row], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print_plain_table(rows, title)
        return
    table = Table(title=title)
    for header in HEADERS:
        table.add_column(header, justify="right" if header in NUMERIC_HEADERS else "left")
    for row in rows:
        table.add_row(*table_cells(row))
    console = Console()
    console.width = max(console.width, 140)
    console.print(table)


def print_plain_table(rows: list[Row], title: str) -> None:
    cells = [HEADERS, *(table_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    print(title)
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, timeout=10, cwd=REPO_DIR)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.decode(errors="replace").strip()


def conditions(args: argparse.Namespace) -> dict[str, object]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "taube_commit": command_output(["git", "rev-parse", "--short", "HEAD"]),
        "postfix": command_output(["postconf", "-d", "-h", "mail_version"]) or None,
        "messages": args.messages,
        "size": args.size,
        "runs": args.runs,
        "concurrency": args.concurrency,
    }


def write_json(path: Path, header: dict[str, object], skipped: dict[str, str],
               measurements: list[Measurement], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "conditions": header,
        "skipped": skipped,
        "summary": [asdict(row) for row in rows],
        "measurements": [asdict(m) | {"rate": m.rate, "delivered_rate": m.delivered_rate,
                                      "server_cpu_share": m.server_cpu_share,
                                      "server_cpu_ms_per_message": m.server_cpu_ms_per_message,
                                      "mismatch": m.mismatch} for m in measurements],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def checked_choices(text: str, choices: tuple[str, ...] | list[str]) -> list[str]:
    items = csv_list(text)
    unknown = [item for item in items if item not in choices]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
    return items


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in csv_list(s)],
                        default=[1, 50], help="comma-separated client counts (default 1,50)")
    parser.add_argument("--only", type=lambda s: checked_choices(s, list(SERVERS)),
                        default=list(SERVERS), help=f"implementations: {','.join(SERVERS)}")
    parser.add_argument("--loadgens", type=lambda s: checked_choices(s, LOADGENS),
                        default=list(LOADGENS), help=f"load generators: {','.join(LOADGENS)}")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args()
    if args.runs < 1 or args.messages < 1 or min(args.concurrency, default=0) < 1:
        parser.error("--runs, --messages and --concurrency must be positive")
    return args


def main() -> int:
    args = parse_args()
    shutil.rmtree(LOGS, ignore_errors=True)  # logs of failed runs: only this run's
    header = conditions(args)
    print(f"{header['date']}: {args.messages} x {args.size} B messages, {args.runs} run(s), "
          f"concurrency {args.concurrency}, {header['cpus']} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    measurements, skipped = run_all(args)
    rows = summarize(measurements)
    print_table(rows, f"SMTP to durable Maildir, {args.size} B messages, "
                      f"{args.messages} per run, median of {args.runs}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason.splitlines()[0]}")
    write_json(args.json, header, skipped, measurements, rows)
    print(f"results written to {args.json}")
    if any(m.mismatch for m in measurements):
        print("FAILURE: a Maildir did not hold exactly the acknowledged messages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
