"""Normalized text, as ClamAV matches target types 3 (HTML) and 7 (ASCII text) against it.

Checked against clamscan 1.4.6 (tests/test_clamscan_parity.py): ASCII letters are lowercased and
every run of whitespace (space, tab, CR, LF, FF, VT) becomes one space (:class:`TextNormalizer`).
HTML gets clamscan's nocomment.html form on top (:class:`HtmlNormalizer`: character references
decoded, comments dropped, script whitespace dropped); scripts and data: URIs are also handed over as
objects of their own by the HTML unpacker (unpack/html.py).
"""

from __future__ import annotations

import re

from bastion.engine.html_entities import ENTITIES

_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LOWER = bytes(range(ord("a"), ord("z") + 1))
_LOWER_TABLE = bytes.maketrans(_UPPER, _LOWER)


# Normalize this many bytes at a time: the word list of one piece costs ~10x its size in Python objects.
_CHUNK = 1 << 16


class TextNormalizer:
    """Streaming normalizer: feed raw chunks, get normalized chunks.

    Lowercases ASCII letters and collapses each whitespace run (leading and trailing ones too) to one
    space.  ``bytes.split()`` splits on exactly those whitespace bytes, in C: an order of magnitude
    faster than a regex substitution.  A run spanning two chunks stays one space and a word spanning
    two chunks stays one word, so the output does not depend on how the input was cut.
    """

    __slots__ = ("after_space",)

    def __init__(self) -> None:
        self.after_space = False

    def feed(self, chunk: bytes | memoryview) -> bytes:
        out = bytearray()
        view = memoryview(chunk)
        for start in range(0, len(view), _CHUNK):
            lowered = bytes(view[start:start + _CHUNK]).translate(_LOWER_TABLE)
            words = lowered.split()
            if lowered[:1].isspace() and not self.after_space:
                out += b" "
            if not words:
                self.after_space = True
                continue
            out += b" ".join(words)
            self.after_space = lowered[-1:].isspace()
            if self.after_space:
                out += b" "
        return bytes(out)

    def finish(self) -> bytes:
        """Nothing is held back: the end of the input adds nothing."""
        return b""


def normalize_text(data: bytes | memoryview) -> bytes:
    """The normalized form of a whole buffer."""
    return TextNormalizer().feed(data)


# --- HTML -------------------------------------------------------------------------------------------

_WS = b" \t\n\x0b\x0c"
# Script text in nocomment.html: lowercased, whitespace dropped, ' written as ".
_SCRIPT_TABLE = bytes.maketrans(_UPPER + b"'", _LOWER + b'"')
# What ends a run of plain text: a character reference, a comment (also <!DOCTYPE ...>), a script tag.
_HTML_SPECIAL = re.compile(rb"&|<[ \t\n\x0b\x0c]*(?:!|(/?)[sS][cC][rR][iI][pP][tT](?=[ \t\n\x0b\x0c>]))")
_SCRIPT_SPECIAL = re.compile(rb"&|<[ \t\n\x0b\x0c]*/[sS][cC][rR][iI][pP][tT](?=[ \t\n\x0b\x0c>])")
_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:-")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NAME_MAX = 1024  # ClamAV's HTML_STR_LENGTH: a longer name is written out as text
# Complete, plain references, decoded in one step (the character-by-character state machine below
# takes the rest: cut by a piece's end, unterminated, overlong, "&#0x..").  Chosen by measurement: on
# rustdoc pages (4 '&' per KiB) the state machine alone normalized 62 MB/s, with this 64 MB/s: the
# cost is the per-token Python work, not the reference parsing (TextNormalizer alone: 427 MB/s).
_QUICK_REF = re.compile(rb"&(?:([A-Za-z0-9_:-]{1,64});|#([1-9][0-9]{0,14});|#[xX]([0-9a-fA-F]{1,14});)")
# Where a run of plain text ends besides references: a comment or declaration, a script tag.
_STRUCTURE = re.compile(rb"<[ \t\n\x0b\x0c]*(?:!|/?[sS][cC][rR][iI][pP][tT](?=[ \t\n\x0b\x0c>]))")
_WS_BYTES = frozenset(b" \t\n\r\x0b\x0c")
_INT64_MAX = (1 << 63) - 1
# A '<' this close to the end of a piece waits for the next one (to see '<!' or '<script' whole).
_TAG_LOOKAHEAD = 64

_TEXT, _COMMENT, _OPEN_SCRIPT, _SCRIPT = range(4)


def _code_unit(value: int) -> bytes:
    """ClamAV's output for a decoded UTF-16 code unit (entconv.c u16_normalize): below 0xff the byte
    itself, the three CJK/small full stops as '.', anything else as ``&#xhhhh;``; 0 as nothing."""
    value &= 0xFFFF
    if not value:
        return b""
    if value < 0xFF:
        return bytes((value,))
    if value in (0x3002, 0xFF0E, 0xFE52):
        return b"."
    return b"&#x%04x;" % value


def _named(name: bytes) -> bytes:
    """A complete named reference (``&name;``): its character, or itself lowercased when unknown."""
    cp = ENTITIES.get(name)
    return _code_unit(cp) if cp is not None else b"&" + name.translate(_LOWER_TABLE) + b";"


def _numeric(value: int) -> bytes:
    """A complete numeric reference: below 0x80 the byte lowercased, else ClamAV's code unit."""
    return bytes((value,)).translate(_LOWER_TABLE) if value < 0x80 else _code_unit(value)


def _quick(ref: re.Match[bytes]) -> bytes:
    """What a :data:`_QUICK_REF` match stands for."""
    name, decimal, hexa = ref.groups()
    if name is not None:
        return _named(name)
    return _numeric(int(decimal) if decimal is not None else int(hexa, 16))


class HtmlNormalizer:
    """Streaming form of ClamAV's nocomment.html (htmlnorm.c), as far as Bastion reproduces it.

    As clamscan 1.4.6: CR bytes are dropped; text is lowercased with whitespace runs collapsed (as
    TextNormalizer); character references are decoded (``&amp;`` ``&#65;`` ``&#x41;``, 743 named ones,
    code points >= 0xff written ``&#xhhhh;``, unknown names kept lowercased, an unterminated numeric
    one written as its low byte); comments and ``<!...>`` declarations are removed up to the first
    '>' together with the whitespace after them; inside ``<script>`` whitespace is dropped and ' is
    written as " (and comments kept).  Not reproduced: whitespace removal around tags and attributes,
    the notags.html and javascript forms, jscript.encode, multi-byte full stops in the raw text.
    """

    __slots__ = ("text", "mode", "pending", "ref", "name", "value", "hex", "skip_ws")

    def __init__(self) -> None:
        self.text = TextNormalizer()
        self.mode = _TEXT
        self.pending = b""        # raw text held back at a piece's end ('<' without its tag name yet)
        self.ref = 0              # 0: none; 1: after '&'; 2: named (self.name); 3: numeric (value, hex)
        self.name = bytearray()
        self.value = 0
        self.hex = False
        self.skip_ws = False      # after a comment: its following whitespace is dropped

    def _plain(self, out: bytearray, data: bytes) -> None:
        if not data:
            return
        if self.skip_ws:
            data = data.lstrip(_WS)
            if not data:
                return
            self.skip_ws = False
        if self.mode == _SCRIPT:
            out += data.translate(_SCRIPT_TABLE, _WS)
        else:
            out += self.text.feed(data)

    def _emit(self, out: bytearray, decoded: bytes) -> None:
        self.skip_ws = False
        self.text.after_space = False
        out += decoded

    def _reference(self, out: bytearray, data: bytes, i: int) -> int:
        """Go on with a character reference from data[i]; return where plain text resumes (len(data)
        when the reference is still open at the end of the piece)."""
        n = len(data)
        if self.ref == 1:
            if i >= n:
                return n
            if data[i] == 0x23:  # '#'
                self.ref, self.value, self.hex = 3, 0, False
                i += 1
            else:
                self.ref = 2
                self.name.clear()
        if self.ref == 2:
            start = i
            while i < n and data[i] in _NAME_CHARS and len(self.name) + i - start < _NAME_MAX:
                i += 1
            self.name += data[start:i]
            if i >= n:
                return n
            name = bytes(self.name)
            self.ref = 0
            if data[i] == 0x3B:  # ';'
                self._emit(out, _named(name))
                return i + 1
            self._emit(out, b"&" + name.translate(_LOWER_TABLE))  # not a name character, or too long
            return i
        while i < n:  # numeric
            c = data[i]
            if self.value == 0 and c in b"xX":
                self.hex = True
            elif c == 0x3B:
                self.ref = 0
                self._emit(out, _numeric(self.value))
                return i + 1
            elif c in _DIGITS or (self.hex and c in _HEX):
                if self.hex and self.value < _INT64_MAX // 16:
                    self.value *= 16
                elif self.value < _INT64_MAX // 10:
                    self.value *= 10
                else:
                    self.ref = 0
                    self._emit(out, bytes((self.value & 0xFF,)))
                    return i + 1
                inc = c - 48 if c in _DIGITS else (c | 0x20) - 87
                if self.value > _INT64_MAX - inc:
                    self.ref = 0
                    self._emit(out, bytes((self.value & 0xFF,)))
                    return i + 1
                self.value += inc
            else:
                self.ref = 0
                self._emit(out, bytes((self.value & 0xFF,)))
                return i
            i += 1
        return n

    def feed(self, chunk: bytes | memoryview) -> bytes:
        """Normalize the next piece of the page (a reference or '<' at its end waits for the next)."""
        return self._run(bytes(chunk).replace(b"\r", b""), final=False)

    def _quick_text(self, out: bytearray, data: bytes, i: int, final: bool) -> tuple[int, int]:
        """A run of page text whose references are all complete and plain, decoded with one
        substitution and normalized in one step (the token-by-token path gives the same bytes, at a
        tenth of the speed on reference-rich pages).  Returns where it stopped (``i`` when the run
        needs the token-by-token path: an odd or cut reference, a decoded whitespace byte) and where
        the run ends (the next comment or script tag, or the piece's end)."""
        m = _STRUCTURE.search(data, i)
        run_end = m.start() if m is not None else len(data)
        if m is not None:
            limit = run_end
        else:  # a '<' close to the end of the piece waits for the next one, as in _run
            lt = -1 if final else data.rfind(b"<", max(i, len(data) - _TAG_LOOKAHEAD))
            limit = len(data) if lt < 0 else lt
        run = data[i:limit]
        if not run:
            return i, run_end
        found = 0
        odd = False

        def decode(ref: re.Match[bytes]) -> bytes:
            nonlocal found, odd
            found += 1
            text = _quick(ref)
            if any(c in _WS_BYTES for c in text):
                odd = True  # a decoded space is written as is, not folded into its neighbours
            return text

        decoded = _QUICK_REF.sub(decode, run)
        if odd or found != run.count(b"&"):
            return i, run_end
        self._plain(out, decoded)
        return limit, run_end

    def _run(self, data: bytes, final: bool) -> bytes:
        if self.pending:
            data, self.pending = self.pending + data, b""
        out = bytearray()
        i, n = 0, len(data)
        slow_until = 0  # a run the quick path gave back is taken token by token up to here
        while i < n:
            if self.ref:
                i = self._reference(out, data, i)
                continue
            if self.mode == _TEXT and i >= slow_until:
                done, run_end = self._quick_text(out, data, i, final)
                if done > i:
                    i = done
                    continue
                slow_until = run_end
            if self.mode == _COMMENT or self.mode == _OPEN_SCRIPT:
                end = data.find(b">", i)
                if end < 0:
                    if self.mode == _OPEN_SCRIPT:
                        self._plain(out, data[i:])
                    break
                if self.mode == _OPEN_SCRIPT:
                    self._plain(out, data[i:end + 1])
                    self.mode = _SCRIPT
                else:
                    self.mode = _TEXT
                    self.skip_ws = True
                i = end + 1
                continue
            m = (_SCRIPT_SPECIAL if self.mode == _SCRIPT else _HTML_SPECIAL).search(data, i)
            if m is None:
                lt = -1 if final else data.rfind(b"<", max(i, n - _TAG_LOOKAHEAD))
                cut = n if lt < 0 else lt
                if cut > i:
                    self._plain(out, data[i:cut])
                if cut < n and not final:
                    self.pending = data[cut:]
                elif cut < n:
                    self._plain(out, data[cut:])
                break
            self._plain(out, data[i:m.start()])
            token = m.group()
            if token == b"&":
                quick = _QUICK_REF.match(data, m.start())
                if quick is None:
                    self.ref = 1
                else:
                    self._emit(out, _quick(quick))
                    i = quick.end()
                    continue
            elif self.mode == _SCRIPT:  # </script
                self._plain(out, token)
                self.mode = _TEXT
            elif token.endswith(b"!"):
                self.mode = _COMMENT
            else:
                self._plain(out, token)
                self.mode = _TEXT if m.group(1) else _OPEN_SCRIPT
            i = m.end()
        return bytes(out)

    def finish(self) -> bytes:
        """What an open character reference leaves at the end of the file (as clamscan: a named one
        is decoded or written out, a numeric one or a lone '&' is dropped)."""
        out = bytearray()
        if self.pending:
            data, self.pending = self.pending, b""
            out += self._run(data, final=True)
        if self.ref == 2:
            name = bytes(self.name)
            cp = ENTITIES.get(name)
            if cp is not None:
                out += _code_unit(cp)
            elif name:
                out += b"&" + name.translate(_LOWER_TABLE)
        self.ref = 0
        return bytes(out)


def normalize_html(data: bytes | memoryview) -> bytes:
    """The normalized form of a whole HTML buffer."""
    normalizer = HtmlNormalizer()
    return normalizer.feed(data) + normalizer.finish()
