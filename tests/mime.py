"""Test messages with MIME structure."""

from __future__ import annotations


def nested_mime(depth: int, head: bytes = b"From: <a@example.org>\r\nSubject: deep\r\nMIME-Version: 1.0\r\n") -> bytes:
    """A message whose body parts nest ``depth`` levels deep, each one multipart/mixed."""
    opening = [b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)]
    closing = [b"\r\n--b%d--\r\n" % i for i in reversed(range(depth))]
    return head + b"".join(opening) + b"Content-Type: text/plain\r\n\r\ndeep\r\n" + b"".join(closing)
