"""Mail: RFC 822 / MIME messages and mbox files (Python's ``email`` package, pure Python).

Every leaf part is a child, decoded from base64 or quoted-printable (``email`` does that), named by
its ``filename``/``name`` parameter or ``partN``; text parts are children too (their words are
scanned like any text).  Inside a part, uuencoded blocks (``begin 644 name`` ... ``end``) become
children of their own, decoded line by line.  An mbox (``From `` lines) is split into messages.

Bounds: at most ``max_files`` parts, each at most ``max_filesize`` bytes once decoded; the parser
never follows anything outside the message (no external bodies, no URLs).
"""

from __future__ import annotations

import binascii
import email
import email.policy
import re
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

_MBOX_SPLIT = re.compile(rb"(?:^|\n)From [^\n]*\n")
_UU_BEGIN = re.compile(rb"^begin [0-7]{3,4} ([^\r\n]+)\r?$", re.MULTILINE)


def _uudecode(lines: list[bytes]) -> bytes:
    out = bytearray()
    for line in lines:
        if not line:
            continue
        if line[:1] in (b"`", b" ") or line.startswith(b"end"):
            break  # the zero-length line ends the data (a cut-off "end" must not decode as data)
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # lines padded or cut by mail software: decode what the length byte announces
            try:
                length = (line[0] - 32) & 0x3F
                out += binascii.a2b_uu(line[: 1 + (length * 4 + 2) // 3])
            except (binascii.Error, IndexError):
                break
    return bytes(out)


def _uu_blocks(data: bytes) -> Iterator[tuple[str, bytes]]:
    for m in _UU_BEGIN.finditer(data):
        name = m.group(1).decode("latin-1").strip().rsplit("/", 1)[-1] or "uudecoded"
        rest = data[m.end():]
        lines = []
        for line in rest.split(b"\n")[1:]:
            line = line.rstrip(b"\r")
            if line == b"end":
                break
            lines.append(line)
        yield name, _uudecode(lines)


class MailUnpacker:
    handles = frozenset({"CL_TYPE_MAIL"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = bytes(data)
        messages = [m for m in _MBOX_SPLIT.split(raw) if m.strip()] if raw.startswith(b"From ") else [raw]
        count = 0
        used: set[str] = set()
        for message_index, message in enumerate(messages):
            try:
                msg = email.message_from_bytes(message, policy=email.policy.compat32)
            except Exception as exc:  # the parser is lenient; this is a last resort
                yield LimitExceeded("broken", f"unreadable message: {exc}")
                continue
            for part in msg.walk():
                if part.is_multipart():
                    continue
                count += 1
                if count > limits.max_files:
                    yield LimitExceeded("max-files", f"more than {limits.max_files} mail parts")
                    return
                encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
                if encoding in ("x-uuencode", "uuencode", "x-uue", "uue"):
                    # decoded here: email's own uudecoding adds bytes past a short last line
                    text = part.get_payload(decode=False)
                    payload = text.encode("latin-1", "replace") if isinstance(text, str) else b""
                    blocks = list(_uu_blocks(payload))
                    if blocks:
                        for uu_name, decoded in blocks:
                            label = uu_name.replace("!", "_")
                            yield ChildObject(decoded[: limits.max_filesize], label, f"{container_path}!{label}")
                        continue
                try:
                    payload = part.get_payload(decode=True) or b""
                except Exception:  # a broken transfer encoding
                    payload = part.get_payload(decode=False)
                    payload = payload.encode("latin-1", "replace") if isinstance(payload, str) else b""
                if len(payload) > limits.max_filesize:
                    yield LimitExceeded("max-filesize", f"mail part larger than {limits.max_filesize} bytes")
                    continue
                name = part.get_filename() or part.get_param("name") or f"part{count}"
                if not isinstance(name, str):
                    name = f"part{count}"
                name = name.replace("!", "_").rsplit("/", 1)[-1] or f"part{count}"
                if len(messages) > 1:
                    name = f"message{message_index + 1}/{name}"
                while name in used:
                    name = f"{name}.{count}"
                used.add(name)
                if payload:
                    yield ChildObject(payload, name, f"{container_path}!{name}")
                if b"begin " in payload:
                    for uu_name, decoded in _uu_blocks(payload):
                        if decoded:
                            label = f"{name}/{uu_name}"
                            yield ChildObject(decoded[: limits.max_filesize], label, f"{container_path}!{label}")


register(MailUnpacker())
