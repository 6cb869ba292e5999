"""A small authoritative DNS server for tests: UDP and TCP on one loopback port, in a thread.

Answers are built with dnspython (RFC 1035 messages; TCP framing per RFC 1035 section 4.2.2 /
RFC 7766). It knows only the records it is given::

    with DNSServer() as server:
        server.add("example.org", "MX", "10 mx1.example.org.", "20 mx2.example.org.")
        server.add("mx1.example.org", "A", "127.0.0.2")
        server.add("mx2.example.org", "AAAA", "::1")
        server.servfail("broken.example")      # SERVFAIL for that name
        server.drop("slow.example")            # never answered: the client times out
        config = {"dns": {"nameservers": [server.address], "timeout": 2}}
        ...
        assert ("example.org", "MX") in server.queries

* a name it has never heard of: NXDOMAIN;
* a known name without records of the asked type: NOERROR with an empty answer (NODATA);
* a CNAME: the CNAME record, then the target's records of the asked type if it has some
  (an unknown target gives NXDOMAIN, RFC 6604 section 2.1);
* an answer that does not fit in a UDP response (512 octets, or the query's EDNS0 payload
  size) is sent truncated (TC), and the client asks again over TCP (RFC 7766 section 5);
* malformed packets are ignored; nothing a client sends can stop the server thread.

``records`` given to the constructor map names to ``{type: value or [values]}``, e.g.
``{"example.org": {"MX": ["10 mx.example.org."]}, "mx.example.org": {"A": "127.0.0.2"}}``.
Names are case-insensitive, with or without the trailing dot; names inside record data are
taken relative to the root.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset

__all__ = ["DNSServer"]

_MAX_TCP_CONNECTIONS = 64
_MAX_TCP_BUFFER = 2 + 65535
_TCP_IDLE = 30.0


def _name(name: str) -> dns.name.Name:
    text = name.strip()
    if not text.endswith("."):
        text += "."
    return dns.name.from_text(text)


def _rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    if isinstance(rdtype, str):
        return dns.rdatatype.from_text(rdtype.upper())
    return dns.rdatatype.RdataType.make(rdtype)


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() or "."


class DNSServer:
    """An authoritative DNS server on ``host`` (``127.0.0.1`` or ``::1``), UDP and TCP.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``address`` is the
    ``[dns] nameservers`` entry for it (``"127.0.0.1:PORT"`` or ``"[::1]:PORT"``).
    Records, failures and drops can be changed at any time, also while it runs.
    """

    def __init__(
        self,
        records: Mapping[str, Mapping[str, str | Sequence[str]]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self.port = 0
        # 0: any free port. A fixed one (53) is for resolvers that cannot be given a port, such
        # as the C library's, which tests point at this server through /etc/resolv.conf.
        self._bind_port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._zone: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        self._servfail: set[tuple[dns.name.Name, dns.rdatatype.RdataType | None]] = set()
        self._drop: set[tuple[dns.name.Name, dns.rdatatype.RdataType | None]] = set()
        self._queries: list[tuple[str, str]] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._conns: dict[socket.socket, tuple[bytearray, float]] = {}
        for name, types in (records or {}).items():
            for rdtype, values in types.items():
                if isinstance(values, str):
                    values = [values]
                self.add(name, rdtype, *values)

    # -- records and behaviour -------------------------------------------------------------

    def add(self, name: str, rdtype: str, *values: str, ttl: int = 60) -> None:
        """Add records, e.g. ``add("example.org", "MX", "10 mx1.example.org.")``.

        Values are in zone file syntax for the type; they join the records of the same name and
        type already there. With no values, the name merely exists (NODATA for every type).
        """
        owner = _name(name)
        kind = _rdtype(rdtype)
        rdatas = [
            dns.rdata.from_text(
                dns.rdataclass.IN, kind, value, origin=dns.name.root, relativize=False
            )
            for value in values
        ]
        with self._lock:
            node = self._zone.setdefault(owner, {})
            if not rdatas:
                return
            rrset = node.get(kind)
            if rrset is None:
                rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, kind)
                node[kind] = rrset
            for rdata in rdatas:
                rrset.add(rdata)
            rrset.ttl = ttl

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Forget the records of ``name`` of that type (all types, and the name, if None)."""
        owner = _name(name)
        with self._lock:
            if rdtype is None:
                self._zone.pop(owner, None)
            elif owner in self._zone:
                self._zone[owner].pop(_rdtype(rdtype), None)

    def servfail(self, name: str, rdtype: str | None = None) -> None:
        """Answer SERVFAIL to queries for ``name`` (of type ``rdtype`` only, if given)."""
        with self._lock:
            self._servfail.add((_name(name), None if rdtype is None else _rdtype(rdtype)))

    def drop(self, name: str, rdtype: str | None = None) -> None:
        """Never answer queries for ``name`` (of type ``rdtype`` only, if given)."""
        with self._lock:
            self._drop.add((_name(name), None if rdtype is None else _rdtype(rdtype)))

    def heal(self, name: str) -> None:
        """Undo :meth:`servfail` and :meth:`drop` for ``name`` (every type)."""
        owner = _name(name)
        with self._lock:
            self._servfail = {k for k in self._servfail if k[0] != owner}
            self._drop = {k for k in self._drop if k[0] != owner}

    @property
    def queries(self) -> list[tuple[str, str]]:
        """A copy of the (name, type) pairs asked so far, e.g. ``("example.org", "MX")``.

        Names are lower case without the trailing dot; TCP retries count as queries too.
        """
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    def wait_for_query(self, name: str, rdtype: str | None = None, timeout: float = 5.0) -> bool:
        """Wait until a query for ``name`` (and type) has been seen; False after ``timeout``."""
        key = _key(_name(name))
        kind = None if rdtype is None else dns.rdatatype.to_text(_rdtype(rdtype))
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if any(n == key and (kind is None or t == kind) for n, t in self._queries):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"`` (``"[::1]:PORT"`` for IPv6): a ``[dns] nameservers`` entry."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DNSServer:
        """Bind UDP and TCP to one free port and start answering."""
        if self._thread is not None:
            raise RuntimeError("the DNS server is already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        last: OSError | None = None
        for _ in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._bind_port))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
                tcp.listen(16)
            except OSError as exc:  # the TCP port was taken: try another one
                udp.close()
                tcp.close()
                last = exc
                continue
            break
        else:
            raise OSError(f"no free port for UDP and TCP on {self.host}: {last}")
        udp.setblocking(False)
        tcp.setblocking(False)
        self._udp, self._tcp, self.port = udp, tcp, port
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"dns-{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close every socket."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        try:
            assert self._wake_w is not None
            self._wake_w.send(b"x")
        except OSError:
            pass
        thread.join(timeout=10)
        self._thread = None
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = self._wake_r = self._wake_w = None

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ, "udp")
            sel.register(self._tcp, selectors.EVENT_READ, "listen")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                try:
                    events = sel.select(timeout=0.5)
                except OSError:
                    continue
                for key, _ in events:
                    try:
                        self._event(sel, key)
                    except Exception:  # a client must never stop the server
                        if isinstance(key.fileobj, socket.socket) and key.data == "tcp":
                            self._close(sel, key.fileobj)
                self._expire(sel)
            for conn in list(self._conns):
                self._close(sel, conn)

    def _event(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        if key.data == "wake":
            sock.recv(64)
        elif key.data == "udp":
            for _ in range(64):
                try:
                    data, peer = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # e.g. ICMP port unreachable reported on a later read
                    continue
                reply = self._reply(data, tcp=False)
                if reply is not None:
                    try:
                        sock.sendto(reply, peer)
                    except OSError:
                        pass
        elif key.data == "listen":
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if len(self._conns) >= _MAX_TCP_CONNECTIONS:
                conn.close()
                return
            conn.setblocking(False)
            self._conns[conn] = (bytearray(), time.monotonic())
            sel.register(conn, selectors.EVENT_READ, "tcp")
        elif key.data == "tcp":
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close(sel, sock)
                return
            buf, _ = self._conns[sock]
            buf += data
            self._conns[sock] = (buf, time.monotonic())
            if len(buf) > 2 * _MAX_TCP_BUFFER:
                self._close(sel, sock)
                return
            while len(buf) >= 2:
                (size,) = struct.unpack("!H", buf[:2])
                if len(buf) < 2 + size:
                    break
                message = bytes(buf[2 : 2 + size])
                del buf[: 2 + size]
                reply = self._reply(message, tcp=True)
                if reply is not None:
                    sock.settimeout(5.0)
                    try:
                        sock.sendall(struct.pack("!H", len(reply)) + reply)
                    finally:
                        sock.setblocking(False)

    def _close(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        self._conns.pop(conn, None)
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn, (_, last) in list(self._conns.items()):
            if now - last > _TCP_IDLE:
                self._close(sel, conn)

    # -- answers ---------------------------------------------------------------------------

    def _reply(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The response to one query message, or None to stay silent (malformed, dropped)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # malformed: ignore
            return None
        try:
            return self._respond(query, tcp=tcp)
        except Exception:  # a bug here: say SERVFAIL rather than leave the client waiting
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _respond(self, query: dns.message.Message, *, tcp: bool) -> bytes | None:
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire()
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        with self._changed:
            self._queries.append((_key(qname), dns.rdatatype.to_text(qtype)))
            self._changed.notify_all()
            dropped = (qname, None) in self._drop or (qname, qtype) in self._drop
            failed = (qname, None) in self._servfail or (qname, qtype) in self._servfail
            if not dropped and not failed:
                rcode = self._lookup(qname, qtype, response)
        if dropped:
            return None
        if question.rdclass != dns.rdataclass.IN:
            response.answer.clear()
            response.set_rcode(dns.rcode.REFUSED)
        elif failed:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            response.set_rcode(rcode)
        if tcp:  # (the default size limit would be the EDNS0 payload size of the query)
            return response.to_wire(max_size=65535)
        limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            truncated.flags &= ~dns.flags.RA
            truncated.set_rcode(response.rcode())
            return truncated.to_wire()

    def _lookup(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> dns.rcode.Rcode:
        """Fill the answer section (lock held); the response code."""
        name = qname
        for _ in range(8):  # CNAME chain, bounded
            node = self._zone.get(name)
            if node is None:
                return dns.rcode.NXDOMAIN
            if qtype in node:
                response.answer.append(node[qtype].copy())
                return dns.rcode.NOERROR
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None or qtype == dns.rdatatype.CNAME:
                return dns.rcode.NOERROR
            response.answer.append(cname.copy())
            target = next(iter(cname)).target
            assert isinstance(target, dns.name.Name)
            name = target
        return dns.rcode.SERVFAIL
