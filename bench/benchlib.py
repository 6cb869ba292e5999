"""What the benchmark drivers share: options, conditions, interleaved runs, medians, table, JSON.

``smtp_bench.py``, ``relay_bench.py`` and ``pop3_bench.py`` each define their own measurements,
rows and table cells; the machinery around them is here, so that it works the same in all three.
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
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import loadgen
from servers import HOST, REPO_DIR, ServerUnavailable, sbin_tool

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOAD_TIMEOUT = 600.0  # one load generator run, at most

T = TypeVar("T")
M = TypeVar("M")


# --- command line ------------------------------------------------------------------------------
def csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def int_list(text: str) -> list[int]:
    return [int(item) for item in csv_list(text)]


def checked_choices(text: str, choices: Sequence[str]) -> list[str]:
    items = csv_list(text)
    unknown = [item for item in items if item not in choices]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
    return items


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the driver's docstring."""
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])


def add_runs_messages_size(parser: argparse.ArgumentParser, *, messages: int,
                           messages_help: str, size: int) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--messages", type=int, default=messages, help=messages_help)
    parser.add_argument("--size", type=int, default=size, help="message size in bytes")


def add_concurrency(parser: argparse.ArgumentParser, default: list[int]) -> None:
    shown = ",".join(map(str, default))
    parser.add_argument("--concurrency", type=int_list, default=default,
                        help=f"comma-separated client counts (default {shown})")


def add_choices(parser: argparse.ArgumentParser, option: str, choices: Sequence[str],
                help_text: str, default: Sequence[str] | None = None) -> None:
    """A comma-separated subset of ``choices`` (all of them by default)."""
    parser.add_argument(option, type=lambda s: checked_choices(s, choices),
                        default=list(choices if default is None else default), help=help_text)


def add_json(parser: argparse.ArgumentParser, default: Path) -> None:
    parser.add_argument("--json", type=Path, default=default, help="where to write the results")


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.runs < 1 or args.messages < 1 or min(args.concurrency, default=0) < 1:
        parser.error("--runs, --messages and --concurrency must be positive")


# --- conditions and results --------------------------------------------------------------------
def command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, timeout=10, cwd=REPO_DIR)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.decode(errors="replace").strip()


def postfix_version() -> str | None:
    return command_output(["postconf", "-d", "-h", "mail_version"]) or None


def conditions(*, src_modified: bool = False, **fields: object) -> dict[str, object]:
    """The run's conditions: date, machine, Python, taube's commit, then ``fields`` in order.

    With ``src_modified``, also whether ``src/`` had uncommitted changes at the start: the
    commit alone does not say what ran then.
    """
    header: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "taube_commit": command_output(["git", "rev-parse", "--short", "HEAD"]),
    }
    if src_modified:
        header["taube_src_modified"] = bool(command_output(["git", "status", "--porcelain",
                                                            "--", "src"]))
    return header | fields


def machine_now(header: dict[str, object]) -> str:
    """The end of each driver's first progress line."""
    return f"{header['cpus']} CPUs, load average {os.getloadavg()[0]:.2f}"


def write_results(path: Path, header: dict[str, object], skipped: dict[str, str],
                  measurements: Iterable[Any], rows: Iterable[Any],
                  derived: Callable[[Any], dict[str, object]]) -> None:
    """The JSON file: conditions, skipped implementations, rows, and each measurement's fields
    plus ``derived(measurement)`` (its computed rates and checks); says where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "conditions": header,
        "skipped": skipped,
        "summary": [asdict(row) for row in rows],
        "measurements": [asdict(m) | derived(m) for m in measurements],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {path}")


def print_skipped(skipped: dict[str, str]) -> None:
    """After the table: one line per implementation (or tool) that was skipped, and why."""
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason.splitlines()[0]}")


def keep_log(log: Path, folder: Path, stem: str) -> str | None:
    """Copies a failed run's server log to ``folder/stem.log``, before its directory goes."""
    if not log.exists():
        return None
    kept = folder / f"{stem}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    return str(kept)


# --- measuring ---------------------------------------------------------------------------------
@contextmanager
def fresh_directory(prefix: str) -> Iterator[Path]:
    """A new temporary directory, removed afterwards, then ``sync`` so that the next
    measurement does not pay for this one's writeback."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.sync()


def cpu_used(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def poll(read: Callable[[], T], done: Callable[[T], bool], timeout: float,
         began: float) -> tuple[T, float | None]:
    """Reads until ``done``: the last value and the perf_counter() time since ``began``, or
    None for the time if ``timeout`` seconds passed first."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value, time.perf_counter() - began
        if time.monotonic() > deadline:
            return value, None
        time.sleep(0.01)


# --- SMTP load (smtp_bench.py and relay_bench.py) ----------------------------------------------
LOADGENS = ("loadgen", "smtp-source")


@dataclass
class LoadOutcome:
    accepted: int | None
    seconds: float
    errors: dict[str, int]


def smtp_source_path() -> str | None:
    found = sbin_tool("smtp-source")
    return found if Path(found).exists() else None


def run_builtin_loadgen(port: int, messages: int, concurrency: int, size: int, sender: str,
                        recipient: str) -> LoadOutcome:
    loadgen.SENDER, loadgen.RECIPIENT = sender, recipient  # read at call time by loadgen

    async def bounded() -> LoadOutcome:
        result = await asyncio.wait_for(loadgen.run_load(HOST, port, messages, concurrency, size),
                                        LOAD_TIMEOUT)
        return LoadOutcome(result.accepted, result.seconds, dict(result.errors))

    try:
        return asyncio.run(bounded())
    except asyncio.TimeoutError:
        return LoadOutcome(None, LOAD_TIMEOUT, {"load timed out": 1})


def run_smtp_source(port: int, messages: int, concurrency: int, size: int, sender: str,
                    recipient: str) -> LoadOutcome:
    """smtp-source with -d (each of its connections carries many messages), timed as a whole.

    It stops at the first unexpected reply, so a zero exit status means every message got 250.
    """
    command = [str(smtp_source_path()), "-d", "-s", str(concurrency), "-m", str(messages),
               "-l", str(size), "-f", sender, "-t", recipient, f"{HOST}:{port}"]
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


def run_smtp_load(loadgen_name: str, port: int, messages: int, concurrency: int, size: int,
                  sender: str = loadgen.SENDER, recipient: str = loadgen.RECIPIENT) -> LoadOutcome:
    runner = {"loadgen": run_builtin_loadgen, "smtp-source": run_smtp_source}[loadgen_name]
    return runner(port, messages, concurrency, size, sender, recipient)


def run_interleaved(args: argparse.Namespace, measure_fresh: Callable[..., M],
                    describe: Callable[[M], str],
                    skip_as: Callable[[str, ServerUnavailable], str] = lambda name, exc: name,
                    fatal: Collection[str] = ()) -> tuple[list[M], dict[str, str]]:
    """Run 1 of every concurrency, implementation and load generator, then run 2, ...

    ``measure_fresh(implementation, loadgen, concurrency, run, messages, size)`` measures once;
    when it raises ServerUnavailable, ``skip_as(implementation, exc)`` names what is skipped from
    then on, and a name in ``fatal`` ends all measuring.
    """
    skipped: dict[str, str] = {}
    if "smtp-source" in args.loadgens and smtp_source_path() is None:
        skipped["smtp-source"] = "not installed (bash bench/install-peers.sh)"
    measurements: list[M] = []
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
                        key = skip_as(implementation, exc)
                        skipped[key] = str(exc)
                        print(f"skipping {key}: {exc}", file=sys.stderr, flush=True)
                        if key in fatal:
                            return measurements, skipped
                        continue
                    measurements.append(m)
                    print(describe(m), file=sys.stderr, flush=True)
    return measurements, skipped


# --- summary -----------------------------------------------------------------------------------
def group_by(measurements: Iterable[M], key: Callable[[M], Hashable]) -> dict[Any, list[M]]:
    """Measurements per cell, cells in the order they were first measured."""
    groups: dict[Any, list[M]] = {}
    for m in measurements:
        groups.setdefault(key(m), []).append(m)
    return groups


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def errors_note(group: Iterable[Any]) -> str | None:
    """``N error(s)`` over the measurements' ``errors`` counts, or None without any."""
    errors = Counter[str]()
    for m in group:
        errors.update(m.errors)
    return f"{sum(errors.values())} error(s)" if errors else None


def ratio(reference: float | None, value: float | None) -> float | None:
    return reference / value if reference and value else None


def add_ratios(rows: list[Any], cell: Callable[[Any], Hashable], fields: dict[str, str], *,
               taube_too: bool = True) -> None:
    """For each ``ratio_field: median_field``: taube's median / the row's, in the same cell.

    With ``taube_too`` taube's own rows get their ratio (1.0) as well.
    """
    taube = {cell(row): row for row in rows if row.implementation == "taube"}
    for row in rows:
        reference = taube.get(cell(row))
        if reference is None or (row.implementation == "taube" and not taube_too):
            continue
        for ratio_field, median_field in fields.items():
            value = ratio(getattr(reference, median_field), getattr(row, median_field))
            if value is not None:
                setattr(row, ratio_field, value)


# --- the table ---------------------------------------------------------------------------------
def print_table(title: str, headers: list[str], cells: list[list[str]], left: Collection[str],
                min_width: int) -> None:
    """With rich if it is installed (``left`` columns left-aligned, the rest right-aligned, at
    least ``min_width`` wide), else as plain aligned text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        lines = [headers, *cells]
        widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
        print(title)
        for line in lines:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        return
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header in left else "right")
    for line in cells:
        table.add_row(*line)
    console = Console()
    console.width = max(console.width, min_width)
    console.print(table)
