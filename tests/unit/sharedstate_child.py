"""A worker process for the shared state tests: opens the table of DATA_DIR as WORKER_ID and
answers one line per command read from standard input (see :func:`answer`).

Usage: python sharedstate_child.py DATA_DIR WORKER_ID
"""

from __future__ import annotations

import sys
from pathlib import Path

from taube.sharedstate import SharedTable, WorkerIdInUse, open_shared


def limit(text: str) -> int | None:
    return None if text == "-" else int(text)


def answer(state: SharedTable, words: list[str]) -> str:
    """``open CLIENT TOTAL PER SERVICE``: the refusal or "ok" (PER "-": exempt);
    ``burst N CLIENT DISTINCT TOTAL PER SERVICE``: N opens (from CLIENT, or from CLIENT-0 ...
    CLIENT-(N-1) when DISTINCT is 1), none closed: how many were let in;
    ``failed CLIENT WINDOW``: the failures counted; ``lock MAILBOX``: True or False;
    ``hold``: take the table's lock, say "held" and keep it until standard input ends."""
    match words:
        case ["open", client, total, per, service]:
            refusal = state.open_connection(client, total_limit=int(total),
                                            per_client_limit=limit(per), service=service)
            return refusal or "ok"
        case ["burst", n, client, distinct, total, per, service]:
            admitted = 0
            for i in range(int(n)):
                who = f"{client}-{i}" if distinct == "1" else client
                admitted += state.open_connection(who, total_limit=int(total), per_client_limit=limit(per),
                                                  service=service) is None
            return str(admitted)
        case ["failed", client, window]:
            return str(state.auth_failed(client, float(window)))
        case ["lock", mailbox]:
            return str(state.lock_mailbox(mailbox))
        case ["hold"]:
            state._acquire()
            print("held", flush=True)
            sys.stdin.read()
            sys.exit(0)
    return f"unknown command {words!r}"


def main() -> None:
    try:
        state = open_shared(Path(sys.argv[1]), worker_id=int(sys.argv[2]))
    except WorkerIdInUse:
        print("in use", flush=True)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        print(answer(state, line.split()), flush=True)


if __name__ == "__main__":
    main()
