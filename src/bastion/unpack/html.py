"""HTML: what a page carries inside itself.  Children: every ``data:`` URI, decoded
(``page.html!data1``: base64 or percent-encoded; the usual way to smuggle a file through a page) and
every ``<script>`` block's text with HTML character references decoded (``page.html!script1``).
The page itself is still matched through its normalized text, as before.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import urllib.parse
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

_DATA_URI = re.compile(rb"data:([a-z0-9.+/-]*)((?:;[a-z0-9=.+-]+)*),([^\"'\s>)]*)", re.I)
_SCRIPT = re.compile(rb"<script\b[^>]*>(.*?)</script\s*>", re.I | re.S)


class HtmlUnpacker:
    handles = frozenset({"CL_TYPE_HTML"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = bytes(data)
        count = 0
        for kind, pattern in (("data", _DATA_URI), ("script", _SCRIPT)):
            for n, m in enumerate(pattern.finditer(raw), 1):
                count += 1
                if count > limits.max_files:
                    yield LimitExceeded("max-files", f"more than {limits.max_files} embedded objects")
                    return
                try:
                    if kind == "data":
                        body = m.group(3)[: 2 * limits.max_filesize]
                        if b";base64" in m.group(2).lower():
                            body = re.sub(rb"[^A-Za-z0-9+/=_-]", b"", body)
                            content = base64.b64decode(body + b"=" * (-len(body) % 4), altchars=b"-_"
                                                       if b"-" in body or b"_" in body else None)
                        else:
                            content = urllib.parse.unquote_to_bytes(body)
                    else:
                        content = html.unescape(m.group(1).decode("utf-8", "replace")).encode("utf-8")
                except (binascii.Error, ValueError) as exc:
                    yield LimitExceeded("broken", f"{kind}{n}: {exc}")
                    continue
                if len(content) > limits.max_filesize:
                    yield LimitExceeded("max-filesize", f"{kind}{n}: larger than {limits.max_filesize} bytes")
                    continue
                if content.strip():
                    yield ChildObject(content, f"{kind}{n}", f"{container_path}!{kind}{n}")


register(HtmlUnpacker())
