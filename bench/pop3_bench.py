"""POP3 download and login rates: taube side by side with a private Dovecot, in the same run.

Each implementation is started once, in a directory of its own on a free loopback port, with one
user per client (user1@bench.test ...), each holding the same generated mailbox (1000 messages of
4 KiB, CRLF line ends) written straight into Maildir ``new/``. taube runs as one or more variants
(event loop, workers), each a server of its own. One untimed download of every
mailbox warms both servers up (Dovecot builds its index, taube moves the messages to ``cur/``).
Then, interleaved (run 1 of every cell, then run 2, ...):

- download: N clients at once, each USER/PASS, STAT, LIST, UIDL, RETR of every message, QUIT
  (no DELE, so the mailboxes serve every run); messages/s and MB/s;
- login: a bounded number of connect + USER/PASS + QUIT cycles shared by N clients; logins/s.

Dovecot runs twice: ``dovecot`` with ``{PLAIN}`` passwords, as usual for a benchmark peer, and
``dovecot-argon2id``, login test only, with argon2id hashes made with taube's own parameters, so
both pay the same password verification per login.

A message retrieved with another size than LIST announced, or a listing that does not hold the
mailbox's messages, is a failure: the exit status is then 1.

Usage: pop3_bench.py [--runs 3] [--messages 1000] [--concurrency 1,8]
                     [--only taube,dovecot,dovecot-argon2id]
                     [--logins 300] [--size 4096] [--loops uvloop,asyncio] [--workers 1,2]
                     [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (RESULTS_DIR, add_choices, add_concurrency, add_json, add_runs_messages_size,
                      add_taube_options, conditions, cpu_used, errors_note, exit_status, finish,
                      group_by, implementations, keep_log, machine_now, median, new_parser,
                      print_skipped, print_table, run_async, taube_variants, variant_of,
                      write_results)
from pop3_load import HOST, LoadResult, run_download, run_logins
from pop3_servers import SERVERS, Pop3Server, TaubePop3
from profiling import Profile
from servers import ServerUnavailable

TESTS = ("download", "login")
RESULTS = RESULTS_DIR / "pop3-latest.json"
LOGS = RESULTS_DIR / "logs"  # shared with smtp_bench.py, which empties it when it starts
MEASUREMENT_TIMEOUT = 600.0
UNITS = {"download": "msgs/s", "login": "logins/s"}
PEERS = ("dovecot", "dovecot-argon2id")
# Errors that mean a message was lost or torn, not merely a slow or refused session.
INTEGRITY_ERRORS = ("RETR size", "UIDL/LIST count")


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
    peak_rss_mb: float | None = None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.done / self.seconds if self.done and self.seconds > 0 else None

    @property
    def cpu_ms_per_unit(self) -> float | None:
        """Server CPU (all its processes) per message retrieved or per login."""
        if self.server_cpu_seconds is None or not self.done:
            return None
        return 1000 * self.server_cpu_seconds / self.done

    @property
    def integrity_failure(self) -> bool:
        return any(error.startswith(INTEGRITY_ERRORS) for error in self.errors)

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
    cpu_ms_per_unit: float | None
    peak_rss_mb: float | None
    runs: int
    requested_runs: int
    vs_dovecot: float | None = None
    vs_dovecot_argon2id: float | None = None
    notes: str = ""


def bounded(coro: object) -> LoadResult:
    async def run() -> LoadResult:
        return await asyncio.wait_for(coro, MEASUREMENT_TIMEOUT)  # type: ignore[arg-type]

    try:
        return run_async(run())
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
    memory = server.memory()
    m.peak_rss_mb = memory.peak_rss_mb if memory is not None else None
    m.done, m.octets, m.seconds, m.errors = (result.done, result.octets, result.seconds,
                                             dict(result.errors))
    return m


def describe(m: Measurement) -> str:
    rate = f"{m.rate:8.1f} {UNITS[m.test]}" if m.rate else "    failed     "
    text = (f"[run {m.run}] {m.implementation:<8} {m.test:<8} c={m.concurrency:<3} {rate}"
            f"  {m.done}/{m.expected}")
    if m.megabytes_per_second:
        text += f", {m.megabytes_per_second:.2f} MB/s"
    if m.server_cpu_share is not None and m.cpu_ms_per_unit is not None:
        text += f", server CPU {m.server_cpu_share:.0%} ({m.cpu_ms_per_unit:.2f} ms each)"
    if m.peak_rss_mb is not None:
        text += f", peak RSS {m.peak_rss_mb:.0f} MB"
    if m.errors:
        text += f", errors {m.errors}"
    return text


def start_servers(args: argparse.Namespace, root: Path, skipped: dict[str, str],
                  started: dict[str, Pop3Server]) -> None:
    """Starts each implementation into ``started`` (so the caller stops whatever did start)."""
    users = max(args.concurrency)
    for name in implementations(args, PEERS):
        workdir = root / name
        workdir.mkdir()
        variant = variant_of(args, name)
        if variant is not None:
            server: Pop3Server = variant.apply(TaubePop3(workdir, users, args.messages,
                                                         args.size))  # type: ignore[assignment]
        else:
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


def profile_downloads(servers: dict[str, Pop3Server], args: argparse.Namespace) -> None:
    """``--profile``: one more download at the highest concurrency of each taube variant, with
    the profiler attached (a long-running server: py-spy only, cProfile would need a restart)."""
    for name, server in servers.items():
        if not name.startswith("taube") or server.root_pid is None:
            continue
        profile = Profile(f"pop3-download-{name}")
        if profile.method != "py-spy":
            print("profile: py-spy is not installed; POP3 is not profiled", file=sys.stderr)
            return
        profile.attach(server.root_pid)
        m = measure(server, "download", max(args.concurrency), 0, args.messages, args.logins)
        profile.detach()
        print(f"profiled: {describe(m)}\n    profile: {profile.write()}", file=sys.stderr,
              flush=True)


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
        cpu = [m.cpu_ms_per_unit for m in valid if m.cpu_ms_per_unit]
        rss = [m.peak_rss_mb for m in valid if m.peak_rss_mb]
        rows.append(Row(implementation, test, concurrency, UNITS[test], median(rates),
                        min(rates, default=None), max(rates, default=None), median(mbs),
                        median(cpu), median(rss), len(rates), len(group),
                        notes=errors_note(group) or ""))
    peers = {(r.test, r.concurrency, r.implementation): r.median for r in rows}
    for row in rows:
        if row.implementation.startswith("taube") and row.median:
            for attribute, peer in (("vs_dovecot", "dovecot"),
                                    ("vs_dovecot_argon2id", "dovecot-argon2id")):
                value = peers.get((row.test, row.concurrency, peer))
                setattr(row, attribute, row.median / value if value else None)
    # stable: within a cell the implementations stay in the order they were measured
    return sorted(rows, key=lambda r: (TESTS.index(r.test), r.concurrency))


HEADERS = ["implementation", "test", "concurrency", "median rate", "min–max", "MB/s", "runs",
           "CPU ms each", "peak RSS MB", "÷ dovecot", "÷ dovecot-argon2id", "notes"]
LEFT_HEADERS = {"implementation", "test", "notes"}


def table_cells(row: Row) -> list[str]:
    return [row.implementation, row.test, str(row.concurrency),
            f"{row.median:.1f} {row.unit}" if row.median else "-",
            f"{row.low:.0f}–{row.high:.0f}" if row.low and row.high else "-",
            f"{row.median_mb_per_s:.2f}" if row.median_mb_per_s else "-",
            f"{row.runs}/{row.requested_runs}",
            f"{row.cpu_ms_per_unit:.2f}" if row.cpu_ms_per_unit else "-",
            f"{row.peak_rss_mb:.0f}" if row.peak_rss_mb else "-",
            f"{row.vs_dovecot:.2f}" if row.vs_dovecot else "-",
            f"{row.vs_dovecot_argon2id:.2f}" if row.vs_dovecot_argon2id else "-", row.notes]


def derived(m: Measurement) -> dict[str, object]:
    """What the JSON file adds to each measurement's fields."""
    return {"rate": m.rate, "mb_per_s": m.megabytes_per_second,
            "server_cpu_share": m.server_cpu_share, "cpu_ms_per_unit": m.cpu_ms_per_unit,
            "integrity_failure": m.integrity_failure}


def parse_args() -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_runs_messages_size(parser, messages=1000, messages_help="messages per mailbox",
                           size=4096)
    parser.add_argument("--logins", type=int, default=300, help="login cycles per login run")
    add_concurrency(parser, [1, 8])
    add_choices(parser, "--only", list(SERVERS), f"implementations: {','.join(SERVERS)}")
    add_choices(parser, "--tests", TESTS, f"tests: {','.join(TESTS)}")
    add_taube_options(parser)
    add_json(parser, RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.messages, args.logins = 1, 200, 40
    if (args.runs < 1 or args.messages < 1 or args.logins < 1
            or min(args.concurrency, default=0) < 1 or args.size < 300):
        parser.error("--runs, --messages, --logins, --concurrency must be positive; "
                     "--size at least 300")
    args.variants = taube_variants(args)
    return args


def main() -> int:
    args = parse_args()
    header = conditions(args, messages=args.messages, size=args.size, logins=args.logins,
                        concurrency=args.concurrency, tests=args.tests)
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
        if args.profile:
            profile_downloads(servers, args)
        measurements = run_all(servers, args)
        header["event_loops"] = {name: server.event_loop() for name, server in servers.items()
                                 if isinstance(server, TaubePop3)}
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
    finish(header)
    write_results(args.json, header, skipped, measurements, rows, derived)
    failed = any(m.integrity_failure for m in measurements)
    if failed:
        print("FAILURE: a message was retrieved torn or a listing did not match the mailbox",
              file=sys.stderr)
    return exit_status(failed, skipped)


if __name__ == "__main__":
    sys.exit(main())
