"""CPU time, memory and file limits of a process we started and of all its descendants, from /proc.

A server under test is a tree of processes: taube's supervisor, its workers and its queue
runner; Postfix's master with smtpd, cleanup, qmgr and virtual; Dovecot's master with a login
and a mail process per session. Each is found from the PID the bench holds (its child, or the
master's pid file) by walking ``/proc/PID/task/*/children``; nothing is matched by name.

CPU time of a tree: for every living process, its own user + system time plus the times of its
children that it has already waited for (``cutime`` + ``cstime``). A descendant that exits and
is reaped moves its time from its own counters into its parent's ``c*`` counters, so between two
readings the tree's total only grows by what the tree really used, however processes come and
go (as Postfix's and Dovecot's do).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every living process below it, parents before children."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        if not Path(f"/proc/{current}").exists():
            continue
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                pending.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces


def process_cpu_seconds(pid: int, *, reaped_children: bool = True) -> float | None:
    """User + system time of ``pid`` (all threads), with its reaped children's unless told not."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14..17
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by ``pid``'s tree (see the module's docstring), None if it is gone."""
    pids = descendants(pid)
    if not pids:
        return None
    return sum(process_cpu_seconds(p) or 0.0 for p in pids)


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass(frozen=True)
class Memory:
    processes: int
    rss: int  # bytes resident now, summed over the tree
    peak_rss: int  # bytes: the sum of each process's high-water mark (VmHWM)

    @property
    def rss_mb(self) -> float:
        return self.rss / 2**20

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / 2**20


def tree_memory(pid: int) -> Memory:
    """Resident memory of ``pid``'s tree now and at each process's peak. The peaks' sum is an
    upper bound of the tree's peak (the processes need not have peaked at the same moment)."""
    pids = descendants(pid)
    return Memory(len(pids), sum(_status_kib(p, "VmRSS") for p in pids) * 1024,
                  sum(_status_kib(p, "VmHWM") for p in pids) * 1024)


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of a running process, from ``/proc/PID/limits``."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    return None


def raise_open_files_limit(wanted: int) -> int:
    """Raises this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit, or
    beyond it when we may: root); children started afterwards inherit it. Returns the new
    soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted
