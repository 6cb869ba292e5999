"""POP3 download and login rates: taube side by side with a private Dovecot, in the same run.

Each implementation is started once, in a directory of its own on a free loopback port, with one
user per client (user1@bench.test ...), each holding the same generated mailbox (1000 messages of
2 KiB, CRLF line ends) written straight into Maildir ``new/``. One untimed download of every
mailbox warms both servers up (Dovecot builds its index, taube moves the messages to ``cur/``).
Then, interleaved (run 1 of every cell, then run 2, ...):

- download: N clients at once, each USER/PASS, STAT, LIST, UIDL, RETR of every message, QUIT
  (no DELE, so the mailboxes serve every run); messages/s and MB/s;
- login: a bounded number of connect + USER/PASS + QUIT cycles shared by N clients; logins/s.

Dovecot runs twice: ``dovecot`` with ``{PLAIN}`` passwords, as usual for a benchmark peer, and
``dovecot-argon2id``, login test only, with argon2id hashes made with taube's own parameters, so
both pay the same password verification per login.

Usage: pop3_bench.py [--runs 3] [--messages 1000] [--concurrency 1,10]
                     [--only taube,dovecot,dovecot-argon2id]
                     [--logins 300] [--size 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (RESULTS_DIR, add_choices, add_concurrency, add_json, add_ratios,
                      add_runs_messages_size, conditions, cpu_used, errors_note, group_by,
                      keep_log, machine_now, median, new_parser, print_skipped, print_table,
                      write_results)
from pop3_load import HOST, LoadResult, run_download, run_logins
from pop3_servers import SERVERS, Pop3Server, dovecot_version
from servers import ServerUnavailable

TESTS = ("download", "login")
RESULTS = RESULTS_DIR / "pop3-latest.json"
LOGS = RESULTS_DIR / "logs"  # shared with smtp_bench.py, which empties it when it starts
MEASUREMENT_TIMEOUT = 600.0
UNITS = {"download": "msgs/s", "login": "logins/s"}


@dataclass
class Measurement:
    implementation: str
    test: str
    concurrency: int
    run: int
    expected: int            # messages to retrieve, or login cycles
    done: int = 0
    octets: int = 0
    seconds: float = 0.0
    server_cpu_seconds: float | None = None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.done / self.seconds if self.done and self.seconds > 0 else None

    @property
    def megabytes_per_second(self) -> float | None:
        return self.octets / self.seconds / 1e6 if self.octets and self.seconds > 0 else None

    @property
    def server_cpu_share(self) -> float | None:
        if self.server_cpu_seconds is None or self.seconds <= 0:
            return None
        return self.server_cpu_seconds / self.seconds

    @property
    def clean(self) -> bool:
        return self.done == self.expected and not self.errors


@dataclass
class Row:
    implementation: str
    test: str
    concurrency: int
    unit: str
    median: float | None
    low: float | None
    high: float | None
    median_mb_per_s: float | None
    runs: int
    requested_runs: int
    ratio: float | None = None
    notes: str = ""


def bounded(coro: object) -> LoadResult:
    async def run() -> LoadResult:
        return await asyncio.wait_for(coro, MEASUREMENT_TIMEOUT)  # type: ignore[arg-type]

    try:
        return asyncio.run(run())
    except TimeoutError:
        result = LoadResult(seconds=MEASUREMENT_TIMEOUT)
        result.errors["load timed out"] += 1
        return result


def measure(server: Pop3Server, test: str, concurrency: int, run: int, messages: int,
            logins: int) -> Measurement:
    clients = server.logins()[:concurrency]
    expected = messages * concurrency if test == "download" else logins
    m = Measurement(server.name, test, concurrency, run, expected)
    cpu_before = server.cpu_seconds()
    if test == "download":
        result = bounded(run_download(HOST, server.port, clients))
    else:
        result = bounded(run_logins(HOST, server.port, clients, logins))
    m.server_cpu_seconds = cpu_used(cpu_before, server.cpu_seconds())
    m.done, m.octets, m.seconds, m.errors = (result.done, result.octets, result.seconds,
                                             dict(result.errors))
    return m


def describe(m: Measurement) -> str:
    rate = f"{m.rate:8.1f} {UNITS[m.test]}" if m.rate else "    failed     "
    text = (f"[run {m.run}] {m.implementation:<8} {m.test:<8} c={m.concurrency:<3} {rate}"
            f"  {m.done}/{m.expected}")
    if m.megabytes_per_second:
        text += f", {m.megabytes_per_second:.2f} MB/s"
    if m.server_cpu_share is not None:
        text += f", server CPU {m.server_cpu_share:.0%}"
    if m.errors:
        text += f", errors {m.errors}"
    return text


def start_servers(args: argparse.Namespace, root: Path, skipped: dict[str, str],
                  started: dict[str, Pop3Server]) -> None:
    """Starts each implementation into ``started`` (so the caller stops whatever did start)."""
    users = max(args.concurrency)
    for name in args.only:
        workdir = root / name
        workdir.mkdir()
        server = SERVERS[name](workdir, users, args.messages, args.size)
        try:
            server.start()
        except ServerUnavailable as exc:
            skipped[name] = str(exc)
            print(f"skipping {name}: {exc}", file=sys.stderr, flush=True)
            continue
        started[name] = server
        print(f"{name} ready on {HOST}:{server.port} ({users} users x {args.messages} messages)",
              file=sys.stderr, flush=True)


def warm_up(servers: dict[str, Pop3Server], args: argparse.Namespace,
            skipped: dict[str, str]) -> None:
    """One untimed download of every mailbox, so no run pays for a first-time index/rename."""
    for name, server in list(servers.items()):
        m = measure(server, "download", len(server.logins()), 0, args.messages, args.logins)
        print(f"warm-up: {describe(m)}", file=sys.stderr, flush=True)
        if not m.done:
            skipped[name] = f"warm-up download failed: {m.errors}"
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr, flush=True)
            kept = keep_log(server.log, LOGS, f"pop3-{name}-warm-up")
            if kept:
                print(f"    server log: {kept}", file=sys.stderr, flush=True)
            server.stop()
            del servers[name]


def run_all(servers: dict[str, Pop3Server], args: argparse.Namespace) -> list[Measurement]:
    measurements: list[Measurement] = []
    for run in range(1, args.runs + 1):
        for test in args.tests:
            for concurrency in args.concurrency:
                for server in servers.values():
                    if test not in server.tests:
                        continue
                    m = measure(server, test, concurrency, run, args.messages, args.logins)
                    measurements.append(m)
                    print(describe(m), file=sys.stderr, flush=True)
    return measurements


def summarize(measurements: list[Measurement]) -> list[Row]:
    groups = group_by(measurements, lambda m: (m.implementation, m.test, m.concurrency))
    rows = []
    for (implementation, test, concurrency), group in groups.items():
        valid = [m for m in group if m.clean]
        rates = [m.rate for m in valid if m.rate]
        mbs = [m.megabytes_per_second for m in valid if m.megabytes_per_second]
        rows.append(Row(implementation, test, concurrency, UNITS[test], median(rates),
                        min(rates, default=None), max(rates, default=None), median(mbs),
                        len(rates), len(group), notes=errors_note(group) or ""))
    add_ratios(rows, lambda r: (r.test, r.concurrency), {"ratio": "median"}, taube_too=False)
    return sorted(rows, key=lambda r: (TESTS.index(r.test), r.concurrency,
                                       r.implementation != "taube", r.implementation))


HEADERS = ["implementation", "test", "concurrency", "median rate", "min–max", "MB/s", "runs",
           "taube ÷ peer", "notes"]
LEFT_HEADERS = {"implementation", "test", "notes"}


def table_cells(row: Row) -> list[str]:
    return [row.implementation, row.test, str(row.concurrency),
            f"{row.median:.1f} {row.unit}" if row.median else "-",
            f"{row.low:.0f}–{row.high:.0f}" if row.low and row.high else "-",
            f"{row.median_mb_per_s:.2f}" if row.median_mb_per_s else "-",
            f"{row.runs}/{row.requested_runs}",
            f"{row.ratio:.2f}" if row.ratio else "-", row.notes]


def derived(m: Measurement) -> dict[str, object]:
    """What the JSON file adds to each measurement's fields."""
    return {"rate": m.rate, "mb_per_s": m.megabytes_per_second,
            "server_cpu_share": m.server_cpu_share}


def parse_args() -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_runs_messages_size(parser, messages=1000, messages_help="messages per mailbox",
                           size=2048)
    parser.add_argument("--logins", type=int, default=300, help="login cycles per login run")
    add_concurrency(parser, [1, 10])
    add_choices(parser, "--only", list(SERVERS), f"implementations: {','.join(SERVERS)}")
    add_choices(parser, "--tests", TESTS, f"tests: {','.join(TESTS)}")
    add_json(parser, RESULTS)
    args = parser.parse_args()
    if (args.runs < 1 or args.messages < 1 or args.logins < 1
            or min(args.concurrency, default=0) < 1 or args.size < 300):
        parser.error("--runs, --messages, --logins, --concurrency must be positive; "
                     "--size at least 300")
    return args


def main() -> int:
    args = parse_args()
    header = conditions(dovecot=dovecot_version(), messages=args.messages, size=args.size,
                        logins=args.logins, runs=args.runs, concurrency=args.concurrency,
                        tests=args.tests)
    print(f"{header['date']}: {args.messages} x {args.size} B messages per mailbox, "
          f"{args.logins} logins per login run, {args.runs} run(s), concurrency "
          f"{args.concurrency}, {machine_now(header)}", file=sys.stderr)
    skipped: dict[str, str] = {}
    root = Path(tempfile.mkdtemp(prefix="taube-pop3-bench-"))
    root.chmod(0o755)  # Dovecot's mail and auth processes (not root) walk down to their files
    servers: dict[str, Pop3Server] = {}
    measurements: list[Measurement] = []
    failed_logs: dict[str, str] = {}
    try:
        start_servers(args, root, skipped, servers)
        warm_up(servers, args, skipped)
        measurements = run_all(servers, args)
    finally:
        for name, server in servers.items():
            server.stop()
            if any(m.errors for m in measurements if m.implementation == name):
                kept = keep_log(server.log, LOGS, f"pop3-{name}")
                if kept:
                    failed_logs[name] = kept
        shutil.rmtree(root, ignore_errors=True)
    rows = summarize(measurements)
    print_table(f"POP3 over loopback, {args.messages} x {args.size} B messages per "
                f"mailbox, {args.logins} logins per login run, median of {args.runs}",
                HEADERS, [table_cells(row) for row in rows], LEFT_HEADERS, 130)
    print_skipped(skipped)
    for name, kept in failed_logs.items():
        print(f"{name} had errors; its log: {kept}")
    write_results(args.json, header, skipped, measurements, rows, derived)
    return 0


if __name__ == "__main__":
    sys.exit(main())
