"""The opt-in Connect decision before the SMTP greeting (SMTPConfig.connect_decision)."""

from __future__ import annotations

from taube.proto.replies import Reply
from taube.proto.smtp import NEED_DATA, Closed, Connect, Hello, SMTPConfig, SMTPConnection


def _conn() -> SMTPConnection:
    return SMTPConnection(SMTPConfig(hostname="mx.test", connect_decision=True))


def test_off_by_default_greeting_queued_at_once() -> None:
    conn = SMTPConnection(SMTPConfig(hostname="mx.test"))
    assert conn.data_to_send() == b"220 mx.test ESMTP taube\r\n"
    assert conn.next_event() is NEED_DATA


def test_connect_first_and_no_greeting_before_the_answer() -> None:
    conn = _conn()
    assert conn.data_to_send() == b""
    assert isinstance(conn.next_event(), Connect)
    assert conn.awaiting_decision
    assert conn.data_to_send() == b""


def test_accept_queues_the_greeting_and_the_session_goes_on() -> None:
    conn = _conn()
    assert isinstance(conn.next_event(), Connect)
    conn.accept()
    assert conn.data_to_send() == b"220 mx.test ESMTP taube\r\n"
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"EHLO client.test\r\n")
    event = conn.next_event()
    assert isinstance(event, Hello) and event.domain == "client.test"


def test_accept_with_a_reply_replaces_the_greeting() -> None:
    conn = _conn()
    conn.next_event()
    conn.accept(Reply(code=220, enhanced=None, text="mx.test ready"))
    assert conn.data_to_send() == b"220 mx.test ready\r\n"


def test_reject_sends_the_reply_and_closes() -> None:
    conn = _conn()
    conn.next_event()
    conn.reject(Reply(code=554, enhanced="5.7.1", text="Service unavailable; client host blocked"))
    assert conn.data_to_send() == b"554 5.7.1 Service unavailable; client host blocked\r\n"
    event = conn.next_event()
    assert isinstance(event, Closed) and event.reason == "refused at connect"
    assert conn.closed
    conn.receive_data(b"EHLO client.test\r\n")
    assert isinstance(conn.next_event(), Closed)
    assert conn.data_to_send() == b""


def test_input_while_the_decision_is_open_is_talking_first() -> None:
    conn = _conn()
    conn.next_event()
    conn.receive_data(b"EHLO client.test\r\n")
    conn.accept()
    out = conn.data_to_send()
    assert out.startswith(b"554 5.5.0") and b"220" not in out
    assert isinstance(conn.next_event(), Closed)
    assert conn.closed


def test_input_after_accept_before_the_greeting_was_taken_is_talking_first() -> None:
    conn = _conn()
    conn.next_event()
    conn.accept()
    conn.receive_data(b"EHLO client.test\r\n")
    assert conn.data_to_send().startswith(b"554 5.5.0")
    assert isinstance(conn.next_event(), Closed)


def test_peer_closing_during_the_decision() -> None:
    conn = _conn()
    conn.next_event()
    conn.receive_data(b"")
    conn.accept()
    assert conn.data_to_send() == b"220 mx.test ESMTP taube\r\n"
    assert isinstance(conn.next_event(), Closed)
