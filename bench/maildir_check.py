"""After a run: does the Maildir hold exactly the acknowledged messages, each whole, none twice?

Read after the clock has stopped, so it costs the measurement nothing. A message is *torn* when
its body (after the first empty line) holds fewer payload octets than were sent (line ends are
not counted: Postfix's virtual(8) stores LF, taube and the aiosmtpd peer CRLF) or the file does
not end with a line end. Duplicates are found by Message-ID when every message sent had its own
(the built-in load generator numbers them); ``smtp-source``'s IDs are not unique, so with it a
duplicate shows only as more files than ``250`` replies.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class MaildirCheck:
    count: int
    torn: int = 0
    duplicates: int = 0

    def problems(self, accepted: int | None) -> list[str]:
        """What is wrong against ``accepted`` 250 replies (empty if nothing is)."""
        found = []
        if accepted is not None and self.count < accepted:
            found.append(f"{accepted - self.count} lost")
        if accepted is not None and self.count > accepted:
            found.append(f"{self.count - accepted} extra")
        if self.torn:
            found.append(f"{self.torn} torn")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicated")
        return found


def payload_octets(data: bytes) -> int:
    """Octets that are not line ends."""
    return len(data) - data.count(b"\r") - data.count(b"\n")


def expected_body_payload(loadgen: str, message: bytes | None, size: int) -> int:
    """Body octets (line ends left out) that one sent message carries.

    ``smtp-source -l SIZE`` sends SIZE body octets as 78-character lines, each CRLF counted in
    SIZE except the last one's; the built-in generator sends ``message`` as it is.
    """
    if loadgen == "smtp-source":
        return size - 2 * (size // 80)
    assert message is not None
    return payload_octets(message.split(b"\r\n\r\n", 1)[1])


def check_maildir(folder: Path | None, body_payload: int, unique_ids: bool) -> MaildirCheck | None:
    """Every file in ``folder`` (a Maildir's ``new/`` or ``cur/``); None when there is none."""
    if folder is None:
        return None
    torn = 0
    ids: set[bytes] = set()
    duplicates = count = 0
    try:
        entries = [entry.path for entry in os.scandir(folder) if entry.is_file()]
    except FileNotFoundError:
        return MaildirCheck(0)
    for path in entries:
        data = Path(path).read_bytes()
        count += 1
        head, _, body = data.partition(b"\n\r\n") if b"\n\r\n" in data else data.partition(b"\n\n")
        whole = payload_octets(body) >= body_payload and data.endswith(b"\n")
        if unique_ids:
            match = MESSAGE_ID.search(head)
            if match is None:
                whole = False
            elif match.group(1) in ids:
                duplicates += 1
            else:
                ids.add(match.group(1))
        torn += not whole
    return MaildirCheck(count, torn, duplicates)
