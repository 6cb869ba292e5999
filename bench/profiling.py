"""``--profile``: where a taube server spends its CPU during one untimed run of a cell.

With py-spy (``pip install py-spy``; make bench installs it) the server's processes (supervisor,
workers, queue runner: ``--subprocesses``) are sampled from outside while the load runs,
``--nonblocking`` so the server is never paused, every thread included. Without it, the server is
asked to profile itself with cProfile (``TAUBE_CPROFILE=DIR``, read by ``taube.loop.run``): only
the event loop's thread, written when the process exits.

Either way two files are left in ``bench/results/profiles/``: the raw data (py-spy's collapsed
stacks, or pstats files) and ``NAME.top.txt``, the functions with the most samples of their own
(*self*) and with the most samples anywhere on the stack (*total*), the lines a profile's reader
looks at first.
"""

from __future__ import annotations

import io
import pstats
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from servers import VENV_BIN

PROFILES = Path(__file__).resolve().parent / "results" / "profiles"
TOP = 30
SAMPLE_RATE = 200  # per second: enough samples in a run of a few seconds
CPROFILE_ENV = "TAUBE_CPROFILE"
LINE_NUMBER = re.compile(r":\d+\)$")
# Leaves where a pool thread waits for work (py-spy cannot always tell such a thread is idle):
# counted apart, not among the functions that use time.
WAITING = frozenset({"_worker (concurrent/futures/thread.py)", "Condition.wait (threading.py)"})


def py_spy() -> str | None:
    found = VENV_BIN / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Profile:
    """One profiled server run: ``env()`` before it starts, ``attach(pid)`` once it runs,
    ``detach()`` after the load, ``write()`` after it stopped."""

    def __init__(self, name: str) -> None:
        self.name = name
        PROFILES.mkdir(parents=True, exist_ok=True)
        self.tool = py_spy()
        self.raw = PROFILES / f"{name}.{'collapsed.txt' if self.tool else 'pstats'}"
        self.top = PROFILES / f"{name}.top.txt"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = PROFILES / f"{name}.py-spy.log"

    @property
    def method(self) -> str:
        return "py-spy" if self.tool else "cProfile"

    def env(self) -> dict[str, str]:
        """What the server's environment needs: the cProfile switch when py-spy is missing."""
        if self.tool:
            return {}
        self.raw.mkdir(parents=True, exist_ok=True)
        return {CPROFILE_ENV: str(self.raw)}

    def attach(self, pid: int) -> None:
        if not self.tool:
            return
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [self.tool, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                 "--threads", "--rate", str(SAMPLE_RATE), "--format", "raw",
                 "--output", str(self.raw)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def detach(self) -> None:
        """Stops py-spy (SIGINT: it writes what it sampled and exits)."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)

    def write(self) -> Path | None:
        """The top lines, from whatever the profiler left; None if it left nothing."""
        if self.tool:
            text = summarize_collapsed(self.raw) if self.raw.exists() else None
        else:
            text = summarize_pstats(self.raw)
        if text is None:
            return None
        self.top.write_text(f"{self.name} ({self.method})\n{text}")
        return self.top


def frame_name(frame: str) -> str:
    """``handle (taube/net/session.py:120)`` without the line: one entry per function."""
    return LINE_NUMBER.sub(")", frame.strip())


def stack_owner(frames: list[str]) -> tuple[str, str]:
    """(process, thread kind) of one py-spy stack: the innermost ``process PID:"command"`` frame
    shortened to the program it runs, the ``thread (TID): NAME`` frame's name without the pool
    index (``taube-io_12`` is ``taube-io``)."""
    process, thread = "?", "?"
    for frame in frames:
        if frame.startswith("process "):
            command = frame.partition(":")[2].strip('"').split()
            if "taube.delivery.process" in command:
                process = "queue runner"
            elif "-m" in command[:-1]:
                process = command[command.index("-m") + 1]  # e.g. taube.server.worker
            else:
                process = "taube " + next((word for word in command[1:]
                                           if not word.startswith(("/", "-"))), "?")
        elif frame.startswith("thread "):
            thread = re.sub(r"_\d+$", "", frame.partition(": ")[2].strip())
    return process, thread


def summarize_collapsed(path: Path, top: int = TOP) -> str | None:
    """From py-spy's ``--format raw`` output (one stack per line, root first, frames separated
    by ``;``, the count last): the samples per process and thread kind, then the functions with
    the most samples of their own in the event loop threads (``MainThread``: Python CPU work),
    in the other threads (the commit and lookup pools: mostly blocked in system calls such as
    fsync), and by total samples anywhere on the stack; pool threads waiting for work are
    counted apart."""
    owners: Counter[tuple[str, str]] = Counter()
    loop_own: Counter[str] = Counter()
    other_own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    samples = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw = stack.split(";")
        n = int(count)
        samples += n
        owner = stack_owner(raw)
        owners[owner] += n
        frames = [frame_name(f) for f in raw
                  if not f.startswith(("process ", "thread ")) and f.strip()]
        if not frames:
            continue
        if owner[1] != "MainThread" and frames[-1] in WAITING:
            waiting += n
            continue
        (loop_own if owner[1] == "MainThread" else other_own)[frames[-1]] += n
        for name in set(frames):
            anywhere[name] += n
    if not samples:
        return None
    out = io.StringIO()
    out.write(f"{samples} samples at {SAMPLE_RATE}/s over all threads and processes\n\n")
    out.write("samples per process and thread:\n")
    for (process, thread), n in owners.most_common():
        out.write(f"{100 * n / samples:6.1f}%  {n:7d}  {process} {thread}\n")
    out.write(f"{100 * waiting / samples:6.1f}%  {waiting:7d}  of them pool threads waiting for "
              "work (left out below)\n\n")
    for title, counter in (("self, event loop threads", loop_own),
                           ("self, other threads", other_own),
                           ("total (self + callees), all threads", anywhere)):
        out.write(f"top {top} by {title} (% of all samples):\n")
        for name, n in counter.most_common(top):
            out.write(f"{100 * n / samples:6.1f}%  {n:7d}  {name}\n")
        out.write("\n")
    return out.getvalue()


def summarize_pstats(folder: Path, top: int = TOP) -> str | None:
    """cProfile's statistics of every process that wrote some, by own time and by cumulative."""
    files = sorted(folder.glob("*.pstats")) if folder.is_dir() else []
    if not files:
        return None
    out = io.StringIO()
    stats = pstats.Stats(*map(str, files), stream=out)
    stats.strip_dirs()
    out.write(f"cProfile of the event loop threads of {len(files)} process(es)\n\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
