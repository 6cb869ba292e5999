"""A large message goes out streamed from its queue file: one delivery attempt (the queue file
opened at its body offset, one transaction) to a peer on loopback, with the memory it takes
measured. The message is 20 MiB; what the attempt allocates at its peak must stay a small
fraction of that, and the peer must receive it byte for byte, announced with its real size."""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
from pathlib import Path

from taube.delivery.attempt import Connection, Transmission, transmit
from taube.delivery.client import OutboundConnection
from taube.queue.envelope import Envelope, Target
from taube.queue.spool import Spool
from taube.store.maildir import MaildirStore
from tests.peer import ScriptedPeer

SIZE = 20 * 1024 * 1024
PEAK_LIMIT = 2 * 1024 * 1024  # a tenth of the message: a copy of it would not fit
DEADLINE = 120.0


def large_body() -> bytes:
    """20 MiB of CRLF lines, some starting with a dot (stuffed on the way, unstuffed at the peer)."""
    lines = [(b"." if n % 7 == 0 else b"") + b"%08d " % n + b"x" * 900 + b"\r\n" for n in range(64)]
    block = b"".join(lines)
    head = b"Subject: large\r\nMessage-ID: <large@a.test>\r\n\r\n"
    body = head + block * ((SIZE - len(head)) // len(block) + 1)
    return body[:SIZE - 2] + b"\r\n"


def queue(root: Path, body: bytes) -> Spool:
    spool = Spool(root, "mail.a.test", MaildirStore(root / "mail"))
    target = Target(kind="remote", address="bob@peer.test", original="bob@peer.test")
    spool_file = spool.open("0large", "alice@a.test", (target,))
    for start in range(0, len(body), 1 << 20):
        spool_file.write(body[start:start + (1 << 20)])
    spool_file.commit(Envelope(queue_id="0large", sender="alice@a.test", targets=(target,),
                               client_address="127.0.0.1", helo="client", received_at=time.time(),
                               size=len(body)))
    return spool


def test_a_20_mib_message_is_sent_in_bounded_memory(tmp_path: Path) -> None:
    body = large_body()
    assert len(body) == SIZE
    digest = hashlib.sha256(body).hexdigest()
    spool = queue(tmp_path, body)
    del body  # the test's own copy must not be what the peak measures
    entry = spool.queue.load("0large")

    async def attempt() -> Transmission | None:
        async with asyncio.timeout(DEADLINE):
            conn = await OutboundConnection.open(address=peer.host, port=peer.port,
                                                 server_name="peer.test", helo="mail.a.test",
                                                 tls="none")
            try:
                return await transmit(Connection(conn, f"peer.test[{peer.host}]:{peer.port}",
                                                 "peer.test"), entry, ("bob@peer.test",), spool.queue)
            finally:
                await conn.close()

    extensions = ("PIPELINING", f"SIZE {2 * SIZE}", "8BITMIME", "ENHANCEDSTATUSCODES")
    with ScriptedPeer(keep_data=False, extensions=extensions) as peer:
        tracemalloc.start()
        try:
            sent = asyncio.run(attempt())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sent is not None and sent.outcomes["bob@peer.test"].kind == "sent", sent
        [tx] = peer.wait_for_transactions(1, DEADLINE)

    assert tx.size == SIZE and tx.sha256 == digest  # byte for byte
    assert tx.mail_params["SIZE"] == str(SIZE)  # RFC 1870: the message's real size
    assert peak < PEAK_LIMIT, f"peak {peak} octets while sending {SIZE}"
