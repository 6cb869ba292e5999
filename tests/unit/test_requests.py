"""The CLI's request files for the queue runner."""

from __future__ import annotations

from pathlib import Path

from taube.delivery.requests import pending, request_path, write_request


def test_requests_are_taken_in_order_and_removed(tmp_path: Path) -> None:
    first = write_request(tmp_path, {"action": "flush", "domain": "example.org"})
    second = write_request(tmp_path, {"action": "retry", "id": "ABC"})
    assert first.parent == request_path(tmp_path) and first.name < second.name
    assert [r for _, r in pending(request_path(tmp_path))] == [
        {"action": "flush", "domain": "example.org"}, {"action": "retry", "id": "ABC"}]
    assert list(request_path(tmp_path).iterdir()) == []


def test_unreadable_requests_are_dropped_and_the_rest_taken(tmp_path: Path) -> None:
    directory = request_path(tmp_path)
    directory.mkdir(parents=True)
    (directory / "1-1.json").write_text("not json")
    (directory / "2-1.json").write_text("[1, 2]")
    (directory / "3-1.tmp").write_text("{}")  # a request still being written: not ours yet
    write_request(tmp_path, {"action": "flush"})
    assert [r for _, r in pending(directory)] == [{"action": "flush"}]
    assert [p.name for p in directory.iterdir()] == ["3-1.tmp"]


def test_no_request_directory_is_no_request(tmp_path: Path) -> None:
    assert list(pending(request_path(tmp_path))) == []
