"""Deeply nested MIME downstream of the engine: a report that returns such a message reads it as
lines (queue/bounce.py parses no MIME of the original), in linear time and bounded memory."""

from __future__ import annotations

import io
import time
import tracemalloc

from taube.queue.bounce import RecipientReport, build_dsn
from tests.mime import nested_mime

NOW = 1_700_000_200.0




def report(original: bytes, content: str = "full") -> tuple[bytes, float, int]:
    failed = RecipientReport(address="bob@example.org", original=None, action="failed", status="5.1.1",
                             diagnostic="smtp; 550 5.1.1 no such user", remote_mta="mx.example.org",
                             last_attempt=NOW)
    tracemalloc.start()
    start = time.perf_counter()
    dsn = build_dsn(reporting_mta="mail.example.com", original_sender="a@example.org", queue_id="Q1",
                    arrival=NOW - 60, reports=[failed], original=io.BytesIO(original),
                    return_content=content, now=NOW)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dsn, elapsed, peak


def test_a_deeply_nested_original_is_returned_whole() -> None:
    original = nested_mime(2_000)
    dsn, _, _ = report(original)
    assert original in dsn
    assert b"Content-Type: message/rfc822" in dsn


def test_returning_headers_reads_only_the_header_section() -> None:
    original = nested_mime(2_000)
    dsn, _, _ = report(original, "headers")
    assert b"Content-Type: text/rfc822-headers" in dsn
    assert b"boundary=\"b1\"" not in dsn  # the first part's header is body, not header section


def test_deep_nesting_costs_linear_time_and_memory_in_its_size() -> None:
    """Linear, not bounded by a constant: a message returned whole is held as a list of its
    lines (at most max_full_size octets of it), about 12 times its size when every line is a
    few octets long, as here."""
    small, large = nested_mime(5_000), nested_mime(20_000)  # about 0.36 and 1.5 MB
    runs = [report(small) for _ in range(3)]
    small_time, small_peak = min(r[1] for r in runs), min(r[2] for r in runs)
    runs = [report(large) for _ in range(3)]
    large_time, large_peak = min(r[1] for r in runs), min(r[2] for r in runs)
    assert large_time < 12 * small_time + 0.05  # four times the input: quadratic would be 16x
    assert large_peak < 5 * small_peak
