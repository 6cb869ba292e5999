"""Incremental DATA decoder and encoder: RFC 5321 4.5.2 transparency and 4.1.1.4 end of data.

Rules enforced here, and why:

* The data ends only at ``CRLF . CRLF`` (the message content starts at a line start, so a first
  line of ``.CRLF`` ends an empty message). A ``.`` followed by a bare LF or bare CR, or a ``.``
  after a bare LF/CR, never ends it: that difference between servers is what SMTP smuggling
  (CVE-2023-51764, CVE-2023-51765, CVE-2023-51766) exploits. The bytes after such a false end
  stay message content and are never taken as commands.
* A bare CR or LF (RFC 5321 2.3.8 forbids them) is either recorded, so that the whole message is
  refused at its end (``"reject"``), or turned into CRLF (``"normalize"``, as Postfix's
  ``smtpd_forbid_bare_newline = normalize``).
* Text lines are at most 1000 octets with CRLF (4.5.3.1.6); a longer line is recorded and the
  message refused at its end. Memory stays bounded: an unfinished line is kept only up to that
  limit.
* A leading dot on a line is removed (4.5.2); the ``Received:`` header fields of the header
  section are counted for the loop check (RFC 5321 6.3).
* The header section (up to and including the empty line that ends it; the whole message when
  there is none) is counted as it arrives, overlong lines included, and recorded as too large
  beyond ``max_header_size`` octets (Postfix's ``header_size_limit``): folded giant fields and
  thousands of small ones count alike. Nothing here parses MIME: any nesting of body parts is
  plain lines, so the work is linear in the octets, and what is kept between reads is one line.

Most reads hold nothing but proper lines: every line end a CRLF, no other CR or LF, no line
over the limit. Such a read is decoded by a few scans over the whole read (``find``,
``count``, ``replace``, a look for a long line once per half a line limit), with no Python work
per line (:meth:`DataDecoder._feed_clean`); anything else goes through the line-by-line rules
above (:meth:`DataDecoder._feed_lines`), which decide every case the scans do not vouch for.
Both give the same result for a clean read, and the tests compare them on random input.

The other direction, message content to the wire (:func:`stuff`, and :class:`ContentEncoder` for
POP3's RETR and TOP): a line starts after every LF, so a leading dot is doubled wherever any
client could see a line start, and the terminating ``.`` always follows a CRLF.
"""

from __future__ import annotations

import re

__all__ = ["ContentEncoder", "DataDecoder", "DecodeResult", "stuff"]

MAX_TEXT_LINE = 1000  # RFC 5321 4.5.3.1.6, CRLF included
_LINE_DOT = re.compile(rb"\n\.")  # a line that starts with a dot, after the first


class DecodeResult:
    """What one :meth:`DataDecoder.feed` produced: content octets, and the rest after the end.

    ``dropped`` counts the content octets of overlong lines that were thrown away instead of
    returned (the message is refused anyway): with ``len(content)`` it is the message size so
    far, the same however the input was split into reads."""

    __slots__ = ("content", "dropped", "ended", "rest")

    def __init__(self, content: bytes, ended: bool, rest: bytes, dropped: int = 0) -> None:
        self.content = content
        self.ended = ended
        self.rest = rest
        self.dropped = dropped


class DataDecoder:
    """Bytes of the DATA phase in, unstuffed content out; knows where the data ends."""

    __slots__ = (
        "_pending",
        "_overlong",
        "_dropped_cr",
        "_normalize",
        "_in_headers",
        "_after_crlf",
        "_header_left",
        "bare_newline",
        "header_too_large",
        "line_too_long",
        "received_count",
    )

    def __init__(self, *, normalize: bool = False, max_header_size: int | None = None) -> None:
        self._pending = b""  # the unfinished last line, at most MAX_TEXT_LINE octets
        self._overlong = False  # the unfinished line already exceeded the limit (start dropped)
        self._dropped_cr = False  # the dropped part of that line held a bare CR
        self._normalize = normalize
        self._in_headers = True
        self._after_crlf = True  # the data starts at a line start, as if after a CRLF
        self.bare_newline = False
        self.line_too_long = False
        self.received_count = 0
        self._header_left = max_header_size  # octets the header section may still take; None: any
        self.header_too_large = False

    def feed(self, data: bytes) -> DecodeResult:
        """Decode ``data``; once the end marker is seen, ``ended`` is true and ``rest`` holds
        the bytes that followed it (the next commands)."""
        buf = self._pending + data if self._pending else data
        if self._after_crlf and not self._overlong:  # at a line start, nothing carried over
            result = self._feed_clean(buf)
            if result is not None:
                return result
        return self._feed_lines(buf)

    def _feed_clean(self, buf: bytes) -> DecodeResult | None:
        """``buf`` (from a line start) decoded by whole-buffer scans, or None when its content
        is not all proper lines: then :meth:`_feed_lines` decides, and nothing was changed.

        In proper lines the first line that is ``.`` CRLF is the first ``CRLF . CRLF`` (or the
        buffer's start), every line start is a CRLF's end, so unstuffing is one ``replace``,
        and the header section ends at the first empty line, the first ``CRLF CRLF``."""
        if buf.startswith(b".\r\n"):
            end = 0
        else:
            end = buf.find(b"\r\n.\r\n")
            end = end + 2 if end >= 0 else -1
        cut = end if end >= 0 else buf.rfind(b"\n") + 1  # the whole lines: scanned in place
        lf = buf.count(b"\n", 0, cut)
        if (lf != buf.count(b"\r\n", 0, cut) or lf != buf.count(b"\r", 0, cut)
                or _has_long_line(buf, cut)):
            return None
        whole = buf if cut == len(buf) else buf[:cut]
        if self._in_headers and whole:
            self._header_lines(whole)
        content = whole.replace(b"\r\n.", b"\r\n")  # the same object when nothing is stuffed
        if content[:1] == b".":
            content = content[1:]
        if end >= 0:
            self._pending = b""
            return DecodeResult(content, True, buf[end + 3:])
        return DecodeResult(content, False, b"", self._hold(buf[cut:]))

    def _header_lines(self, whole: bytes) -> None:
        """The header section's share of proper lines ``whole``: counted, Received: fields
        counted (after unstuffing, as :meth:`_line` sees them), its end noted."""
        if whole.startswith(b"\r\n"):
            end, ended = 2, True
        else:
            found = whole.find(b"\r\n\r\n")
            end, ended = (found + 4, True) if found >= 0 else (len(whole), False)
        self._count_header(end)
        head = (b"\r\n" + whole[:end]).replace(b"\r\n.", b"\r\n")
        self.received_count += head.lower().count(b"\r\nreceived:")
        self._in_headers = not ended

    def _feed_lines(self, buf: bytes) -> DecodeResult:
        """``buf`` decoded line by line, every rule of the module docstring applied."""
        out: list[bytes] = []
        dropped = 0
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl + 1]
            start = nl + 1
            if self._overlong:
                self._overlong = False
                # The whole line decides, as if it had come in one read: a bare CR in its
                # dropped part makes it no CRLF line end either (the next "." does not end).
                proper = self._check_line_end(line) and not self._dropped_cr
                self._dropped_cr = False
                dropped += len(line)
                if self._in_headers:
                    self._count_header(len(line))
                self._after_crlf = proper  # its content is refused anyway
                continue
            if line == b".\r\n" and self._after_crlf:
                self._pending = b""
                return DecodeResult(b"".join(out), True, buf[start:], dropped)
            if self._in_headers:
                self._count_header(len(line))
            out.append(self._line(line))
        dropped += self._hold(buf[start:])
        return DecodeResult(b"".join(out), False, b"", dropped)

    def _hold(self, tail: bytes) -> int:
        """Keep the unfinished last line for the next read, or drop what is over the limit of
        an overlong one; the content octets dropped."""
        if len(tail) < MAX_TEXT_LINE:
            self._pending = tail
            return 0
        # A line's first drop starts at the line start: its stuffing dot is no content.
        stuffed = not self._overlong and tail[:1] == b"."
        self.line_too_long = True
        self._overlong = True
        self._pending = tail[-1:]  # keep a trailing CR so CRLF split across reads is seen
        if self._in_headers:
            self._count_header(len(tail) - 1)  # dropped now, so counted now
        if b"\r" in tail[:-1]:
            self._dropped_cr = True
            self.bare_newline = True
        return len(tail) - 1 - stuffed

    def _count_header(self, octets: int) -> None:
        if self._header_left is not None and not self.header_too_large:
            self._header_left -= octets
            self.header_too_large = self._header_left < 0

    def _check_line_end(self, line: bytes) -> bool:
        """True for a proper CRLF-terminated line with no other CR; records bare CR/LF."""
        if line.endswith(b"\r\n") and line.find(b"\r", 0, len(line) - 2) < 0:
            return True
        self.bare_newline = True
        return False

    def _line(self, line: bytes) -> bytes:
        if len(line) > MAX_TEXT_LINE:
            self.line_too_long = True
        if line[:1] == b"." and line != b".\n":  # ".\n" is a lone dot, not a stuffed line
            line = line[1:]
        self._after_crlf = self._check_line_end(line)
        if not self._after_crlf and self._normalize:
            line = _normalize(line)
        if self._in_headers:
            self._scan_header(line)
        return line

    def _scan_header(self, line: bytes) -> None:
        if line in (b"\r\n", b"\n"):
            self._in_headers = False
        elif line[:9].lower() == b"received:":
            self.received_count += 1


def _has_long_line(lines: bytes, size: int) -> bool:
    """Whether a line of ``lines[:size]`` (whole lines, each ending in LF) is longer than
    :data:`MAX_TEXT_LINE` octets with its line end. Such a line holds a whole aligned block of
    half that length without LF: only blocks are searched, so the Python work is one ``find``
    per 500 octets, not one per line."""
    if size <= MAX_TEXT_LINE:
        return False
    step = MAX_TEXT_LINE // 2
    find = lines.find
    for block in range(0, size - step + 1, step):
        if find(b"\n", block, block + step) < 0:
            start = lines.rfind(b"\n", 0, block) + 1
            end = find(b"\n", block + step) + 1  # the last line ends in LF: never 0 here
            if end - start > MAX_TEXT_LINE:
                return True
    return False


def _normalize(line: bytes) -> bytes:
    """Turn every bare CR and bare LF of ``line`` into CRLF."""
    return line.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def stuff(data: bytes, at_line_start: bool = True) -> bytes:
    """Dot-stuff message content for sending (RFC 5321 4.5.2): a line starting with ``.``
    gets another ``.``. The caller appends ``.\\r\\n`` (after a final CRLF) to end the data."""
    # Most messages hold no line starting with a dot: the regex engine's scan for this literal
    # finds that about twice as fast as replace() does, and the data then goes out as it is.
    out = data.replace(b"\n.", b"\n..") if _LINE_DOT.search(data) else data
    if at_line_start and out[:1] == b".":
        out = b"." + out
    return out


class ContentEncoder:
    """Message content to the wire: dot-stuffing (RFC 1939 section 3), the cut of TOP after the
    header and n body lines (RFC 1939 section 7), and a CRLF before the terminating ``.``.

    A line starts after every LF, as in :func:`stuff`, so a client that splits lines on
    a bare LF can never see a premature ``.`` either. Chunks may split lines anywhere, and the
    output is the same however the content is split.

    The work is done by bytes operations over whole chunks (``replace``, ``find``, ``count``),
    never a Python loop per line, so the cost per chunk is a few C-level scans whatever the
    line lengths: RETR is :func:`stuff` plus two bytes of state, and TOP looks for the empty
    line that ends the header (``LF LF`` or ``LF CR LF``; the message starts at a line start, as
    if after an LF) and then counts LFs.
    """

    __slots__ = ("_body_left", "_carry", "_in_header", "_line_start", "_tail", "complete")

    def __init__(self, body_lines: int | None) -> None:
        if body_lines is not None and body_lines < 0:
            raise ValueError("TOP needs a number of body lines >= 0")
        self._body_left = body_lines  # None: RETR, send everything
        self._in_header = True
        self._line_start = True
        self._carry = b"\n"  # the header's last two octets so far; the start is a line start
        self._tail = b""  # the last two octets sent
        self.complete = False  # set once TOP has all it needs

    def encode(self, data: bytes) -> bytes:
        """The wire form of the next ``data`` of the message (b"" once TOP is complete)."""
        if self.complete or not data:
            return b""
        if self._body_left is not None:
            data = data[:self._top_cut(data)]
            if not data:
                return b""
        out = stuff(data, self._line_start)
        self._line_start = data[-1:] == b"\n"
        self._tail = out[-2:] if len(out) >= 2 else (self._tail + out)[-2:]
        return out

    def _top_cut(self, data: bytes) -> int:
        """How much of ``data`` TOP sends: all of it, or up to the end of the last line wanted
        (then ``complete`` is set)."""
        start = 0
        if self._in_header:
            end = self._header_end(data)
            if end < 0:
                return len(data)
            self._in_header = False
            start = end
        assert self._body_left is not None
        if self._body_left == 0:
            self.complete = True
            return start
        lines = data.count(b"\n", start)
        if lines < self._body_left:
            self._body_left -= lines
            return len(data)
        cut = _after_nth_lf(data, start, self._body_left)
        self._body_left = 0
        self.complete = True
        return cut

    def _header_end(self, data: bytes) -> int:
        """The index in ``data`` just after the empty line that ends the header (RFC 5322 2.1),
        or -1 when ``data`` does not hold it; an empty line is an LF or CR LF at a line start."""
        carry = self._carry
        buf = carry + data
        ends = [i + len(mark) for mark in (b"\n\n", b"\n\r\n") if (i := buf.find(mark)) >= 0]
        if ends:
            return min(ends) - len(carry)
        self._carry = buf[-2:]
        return -1

    def finish(self) -> bytes:
        """What must follow the content: the CRLF the last line lacks, then ``.`` CRLF."""
        if not self._tail or self._tail == b"\r\n":
            return b".\r\n"
        return (b"\n" if self._tail.endswith(b"\r") else b"\r\n") + b".\r\n"


_FIND_LIMIT = 32  # up to this many lines are found one find() each; beyond, by bisection


def _after_nth_lf(data: bytes, start: int, n: int) -> int:
    """The index just after the ``n``-th LF of ``data`` from ``start`` (there are at least n).

    A few lines are found one by one; many (``TOP 1 100000``) by bisection over ``count``, so
    the Python work stays logarithmic in the chunk instead of linear in its lines."""
    if n <= _FIND_LIMIT:
        position = start
        for _ in range(n):
            position = data.index(b"\n", position) + 1
        return position
    low, high = start, len(data)  # the answer is the smallest end with n LFs in [start, end)
    while low < high:
        middle = (low + high) // 2
        if data.count(b"\n", start, middle) >= n:
            high = middle
        else:
            low = middle + 1
    return low
