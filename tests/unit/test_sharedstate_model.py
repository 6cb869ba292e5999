"""The shared table against a model: any sequence of opens, closes and worker deaths over two
workers gives the answers and counts one LocalState gives for all connections together."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from taube.sharedstate import LocalState, SharedTable, create_shared, open_shared

CLIENTS = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "x" * 80]
SERVICES = ["smtp", "pop3"]

opens = st.tuples(st.just("open"), st.integers(0, 1), st.sampled_from(CLIENTS),
                  st.sampled_from(SERVICES), st.one_of(st.none(), st.integers(0, 3)),
                  st.integers(0, 6))
closes = st.tuples(st.just("close"), st.integers(0, 1), st.integers(0, 50))
deaths = st.tuples(st.just("die"), st.integers(0, 1))
operations = st.lists(st.one_of(opens, opens, closes, closes, deaths), max_size=60)


@given(operations)
def test_two_workers_answer_as_one_process(ops: list[tuple]) -> None:
    model = LocalState()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        supervisor = create_shared(data, workers=2, connections=256, clients=64)
        workers: list[SharedTable] = [open_shared(data, worker_id=w) for w in (0, 1)]
        held: list[list[tuple[str, str]]] = [[], []]  # the connections open in each worker
        try:
            for op in ops:
                if op[0] == "open":
                    _, w, client, service, per_client, total = op
                    expected = model.open_connection(client, total_limit=total, per_client_limit=per_client,
                                                     service=service)
                    assert workers[w].open_connection(client, total_limit=total, per_client_limit=per_client,
                                                      service=service) == expected, op
                    if expected is None:
                        held[w].append((client, service))
                elif op[0] == "close" and held[op[1]]:
                    client, service = held[op[1]].pop(op[2] % len(held[op[1]]))
                    model.close_connection(client, service=service)
                    workers[op[1]].close_connection(client, service=service)
                elif op[0] == "die":
                    w = op[1]
                    workers[w].close()
                    supervisor.release_worker(w)
                    for client, service in held[w]:
                        model.close_connection(client, service=service)
                    held[w] = []
                    workers[w] = open_shared(data, worker_id=w)
                assert supervisor.connection_count() == model.connection_count()
        finally:
            for handle in (*workers, supervisor):
                handle.close()
