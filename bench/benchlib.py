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
from collections.abc import (Callable, Collection, Coroutine, Hashable, Iterable, Iterator,
                             Sequence)
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import loadgen
from servers import (HOST, REPO_DIR, ServerUnavailable, Variant, sbin_tool, taube_knows_workers,
                     uvloop_version)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOAD_TIMEOUT = 600.0  # one load generator run, at most

T = TypeVar("T")
M = TypeVar("M")
C = TypeVar("C")


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


def add_taube_options(parser: argparse.ArgumentParser) -> None:
    """--loops, --workers (the taube variants), --quick and --profile: every driver has them."""
    parser.add_argument("--loops", type=lambda s: checked_choices(s, ("uvloop", "asyncio")),
                        default=None, help="taube's event loops (TAUBE_EVENT_LOOP), each a "
                        "variant; default uvloop,asyncio (asyncio alone without uvloop)")
    parser.add_argument("--workers", type=int_list, default=None,
                        help="taube's [server] workers, each a variant; default 1,2 when the "
                        "installed taube has the key, else the key is not written")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one run per cell, few messages")
    parser.add_argument("--profile", action="store_true",
                        help="one more untimed run of each taube cell under py-spy (cProfile "
                             "without it); top lines to results/profiles/")


def taube_variants(args: argparse.Namespace) -> list[Variant]:
    """The variants ``--loops`` x ``--workers`` ask for, with the defaults resolved."""
    loops = args.loops or (["uvloop", "asyncio"] if uvloop_version() else ["asyncio"])
    workers: list[int | None] = list(args.workers or ([1, 2] if taube_knows_workers() else [None]))
    return [Variant(loop, n) for n in workers for loop in loops]


def implementations(args: argparse.Namespace, peers: Sequence[str]) -> list[str]:
    """The names to measure: each taube variant (when ``--only`` names taube) and the peers."""
    names = [v.name for v in args.variants] if "taube" in args.only else []
    return names + [name for name in args.only if name != "taube" and name in peers]


def variant_of(args: argparse.Namespace, name: str) -> Variant | None:
    return next((v for v in args.variants if v.name == name), None)


# --- conditions and results --------------------------------------------------------------------
def command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, timeout=10, cwd=REPO_DIR)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.decode(errors="replace").strip()


def postfix_version() -> str | None:
    return command_output(["postconf", "-d", "-h", "mail_version"]) or None


def dovecot_version() -> str | None:
    return command_output([sbin_tool("dovecot"), "--version"]) or None


def conditions(args: argparse.Namespace | None = None, **fields: object) -> dict[str, object]:
    """The run's conditions: date, machine and its load, versions (Python, uvloop, Postfix,
    Dovecot), taube's commit and whether ``src/`` had uncommitted changes then (the commit alone
    does not say what ran), the taube variants (event loop, workers), then ``fields`` in order.
    ``finish(header)`` adds the load and time at the end."""
    header: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version(),
        "postfix": postfix_version(),
        "dovecot": dovecot_version(),
        "taube_commit": command_output(["git", "rev-parse", "--short", "HEAD"]),
        "taube_src_modified": bool(command_output(["git", "status", "--porcelain", "--",
                                                   "src"])),
    }
    if args is not None:
        header["taube_variants"] = [{"name": v.name, "event_loop": v.loop,
                                     "workers": v.workers} for v in args.variants]
        header["quick"] = args.quick
        header["runs"] = args.runs
    return header | fields


def finish(header: dict[str, object]) -> None:
    header["date_end"] = datetime.now(UTC).isoformat(timespec="seconds")
    header["load_average_end"] = os.getloadavg()


def machine_now(header: dict[str, object]) -> str:
    """The end of each driver's first progress line."""
    text = f"{header['cpus']} CPUs, load average {os.getloadavg()[0]:.2f}"
    if "taube_variants" in header:
        names = ", ".join(v["name"] for v in header["taube_variants"])  # type: ignore[union-attr]
        text += f"; taube as {names}"
    return text


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


def exit_status(failed: bool, skipped: dict[str, str]) -> int:
    """1 when a message was lost, torn or duplicated; else 2 when a taube variant could not be
    measured at all (a bench without taube measured nothing it is for); else 0."""
    if failed:
        return 1
    if any(name.startswith("taube") for name in skipped):
        print("FAILURE: taube could not be measured (see 'skipped' above)", file=sys.stderr)
        return 2
    return 0


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


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """The bench's own asyncio work (load generators) on uvloop when the bench's Python has
    it: the load generator shares the two cores with the server, so it should cost little."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_builtin_loadgen(port: int, messages: int, concurrency: int, size: int, sender: str,
                        recipient: str, auth: tuple[str, str] | None = None) -> LoadOutcome:
    loadgen.SENDER, loadgen.RECIPIENT = sender, recipient  # read at call time by loadgen

    async def bounded() -> LoadOutcome:
        result = await asyncio.wait_for(
            loadgen.run_load(HOST, port, messages, concurrency, size, auth=auth), LOAD_TIMEOUT)
        return LoadOutcome(result.accepted, result.seconds, dict(result.errors))

    try:
        return run_async(bounded())
    except asyncio.TimeoutError:
        return LoadOutcome(None, LOAD_TIMEOUT, {"load timed out": 1})


def run_smtp_source(port: int, messages: int, concurrency: int, size: int, sender: str,
                    recipient: str, auth: tuple[str, str] | None = None) -> LoadOutcome:
    """smtp-source with -d (each of its connections carries many messages), timed as a whole.

    It stops at the first unexpected reply, so a zero exit status means every message got 250.
    It cannot log in: ``auth`` is refused.
    """
    if auth is not None:
        raise ValueError("smtp-source does not speak SMTP AUTH")
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
                  sender: str = loadgen.SENDER, recipient: str = loadgen.RECIPIENT,
                  auth: tuple[str, str] | None = None) -> LoadOutcome:
    runner = {"loadgen": run_builtin_loadgen, "smtp-source": run_smtp_source}[loadgen_name]
    return runner(port, messages, concurrency, size, sender, recipient, auth)


def run_interleaved(runs: int, cells: Sequence[C], names: Sequence[str],
                    measure_fresh: Callable[[str, C, int], M], describe: Callable[[M], str], *,
                    profile: bool = False,
                    skip_as: Callable[[str, ServerUnavailable], str] = lambda name, exc: name,
                    fatal: Collection[str] = ()) -> tuple[list[M], dict[str, str]]:
    """Run 1 of every cell and implementation, then run 2, ...; with ``profile`` a run 0 of
    every taube cell first (profiled, untimed: the drivers leave run 0 out of the medians).

    ``measure_fresh(name, cell, run)`` measures once; when it raises ServerUnavailable,
    ``skip_as(name, exc)`` names what is skipped from then on, and a name in ``fatal`` ends all
    measuring.
    """
    skipped: dict[str, str] = {}
    measurements: list[M] = []
    for run in range(0 if profile else 1, runs + 1):
        for cell in cells:
            for name in names:
                if name in skipped or (run == 0 and not name.startswith("taube")):
                    continue
                try:
                    m = measure_fresh(name, cell, run)
                except ServerUnavailable as exc:
                    key = skip_as(name, exc)
                    skipped[key] = str(exc)
                    print(f"skipping {key}: {exc}", file=sys.stderr, flush=True)
                    if key in fatal:
                        return measurements, skipped
                    continue
                measurements.append(m)
                print(describe(m), file=sys.stderr, flush=True)
    return measurements, skipped


def smtp_source_skipped(loadgens: Iterable[str]) -> dict[str, str]:
    """``{"smtp-source": why}`` when it is asked for and missing."""
    if "smtp-source" in loadgens and smtp_source_path() is None:
        return {"smtp-source": "not installed (bash bench/install-peers.sh)"}
    return {}


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
