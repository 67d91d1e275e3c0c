"""ClamAV body-signature hex patterns: parse, validate, translate to regular expressions.

The grammar is ClamAV's (``BodySignatureFormat``): hex bytes, ``??``, nibbles ``a?``/``?a``, ``*``,
``{n}`` ``{-n}`` ``{n-}`` ``{n-m}``, ``(aa|bb)`` and ``!(aa|bb)``, generic alternatives
``(aa|bbcc|d?ee)``, ``(B)`` ``(L)`` ``(W)`` and ``aa[x-y]HEX``.

Each pattern gets two translations:

* ``regex``: an exact Python ``re`` pattern (bytes, DOTALL).  The engine runs it only on objects the
  fast matcher flagged, to confirm the hit and find its start offset.
* ``prefilter``: a Hyperscan pattern that matches a *superset* of what ``regex`` matches.  It is exact
  (``prefilter_exact``) unless the pattern uses lookaround-like tokens Hyperscan cannot express, which
  are then widened.  A prefilter that still does not compile falls back to the pattern's longest
  literal run (see :mod:`bastion.database.bodymatcher`); no signature is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

HEX = "0123456789abcdefABCDEF"
# {n} with n below this is rewritten to n x ?? by ClamAV and does not split the pattern.
FIXED_GAP_SPLIT = 128
MAX_ALT_NESTING = 15
MAX_BRANGE = 32


@dataclass(frozen=True, slots=True)
class Translation:
    regex: bytes
    prefilter: bytes
    prefilter_exact: bool
    longest_literal: bytes
    min_length: int
    max_length: int | None  # None: unbounded ('*', '{n-}')


class _Tok:
    __slots__ = ("kind", "a", "b", "alts", "neg")

    def __init__(self, kind: str, a: int = 0, b: int | None = 0, alts: list[list[_Tok]] | None = None,
                 neg: bool = False) -> None:
        self.kind = kind      # lit any nhi nlo gap bgap star alt bnd
        self.a = a            # byte value / nibble / gap min / boundary letter (ord)
        self.b = b            # gap max (None = unbounded)
        self.alts = alts
        self.neg = neg


def _hx(v: int) -> str:
    return f"\\x{v:02x}"


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.never = False

    def fail(self, msg: str) -> ValueError:
        return ValueError(f"{msg} at position {self.i} of body signature")

    def parse_seq(self, depth: int, stop: str = "") -> list[_Tok]:
        out: list[_Tok] = []
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if stop and c in stop:
                break
            if c in HEX or c == "?":
                out.append(self.parse_byte())
            elif c == "*":
                self.i += 1
                out.append(_Tok("star", 0, None))
            elif c == "{":
                out.append(self.parse_gap())
            elif c == "!":
                if not s.startswith("(", self.i + 1):
                    raise self.fail("'!' must be followed by '('")
                self.i += 1
                out.append(self.parse_alt(depth, negated=True))
            elif c == "(":
                out.append(self.parse_alt(depth, negated=False))
            elif c == "[":
                out.append(self.parse_brange())
            else:
                raise self.fail(f"unexpected character {c!r}")
        return out

    def parse_byte(self) -> _Tok:
        pair = self.s[self.i:self.i + 2]
        if len(pair) < 2 or any(ch not in HEX and ch != "?" for ch in pair):
            raise self.fail("odd number of hex digits")
        self.i += 2
        hi, lo = pair
        if hi == "?" and lo == "?":
            return _Tok("any")
        if lo == "?":
            return _Tok("nhi", int(hi, 16))
        if hi == "?":
            return _Tok("nlo", int(lo, 16))
        return _Tok("lit", int(pair, 16))

    def parse_gap(self) -> _Tok:
        end = self.s.find("}", self.i)
        if end < 0:
            raise self.fail("unterminated '{'")
        body = self.s[self.i + 1:end]
        self.i = end + 1
        try:
            if body.startswith("-"):
                lo, hi = 0, int(body[1:])
            elif body.endswith("-"):
                lo, hi = int(body[:-1]), None
            elif "-" in body:
                a, b = body.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(body)
        except ValueError:
            raise self.fail(f"bad range {{{body}}}") from None
        if lo < 0:
            raise self.fail(f"bad range {{{body}}}")
        if hi is not None and hi < lo:
            self.never = True  # clamscan loads {5-2} and never matches it
        return _Tok("gap", lo, hi)

    def parse_brange(self) -> _Tok:
        end = self.s.find("]", self.i)
        if end < 0:
            raise self.fail("unterminated '['")
        body = self.s[self.i + 1:end]
        a, dash, b = body.partition("-")
        if not dash or not a.isdigit() or not b.isdigit() or int(b) < int(a) or int(b) > MAX_BRANGE:
            raise self.fail(f"bad byte range [{body}] (x-y with y <= {MAX_BRANGE})")
        self.i = end + 1
        return _Tok("bgap", int(a), int(b))

    def parse_alt(self, depth: int, negated: bool) -> _Tok:
        if depth >= MAX_ALT_NESTING:
            raise self.fail("alternatives nested too deeply")
        self.i += 1  # '('
        if self.s.startswith(("B)", "L)", "W)"), self.i):
            if negated:
                raise self.fail("'!' cannot negate a boundary")
            letter = self.s[self.i]
            self.i += 2
            return _Tok("bnd", ord(letter))
        alts: list[list[_Tok]] = []
        while True:
            seq = self.parse_seq(depth + 1, stop="|)")
            if self.i >= len(self.s):
                raise self.fail("unterminated '('")
            if not seq:
                raise self.fail("empty alternative")
            for t in seq:
                if t.kind == "star" or (t.kind == "gap" and (t.b is None or t.a != t.b or t.a >= FIXED_GAP_SPLIT)):
                    raise self.fail("alternatives cannot contain '*' or ranged '{}'")
            alts.append(seq)
            c = self.s[self.i]
            self.i += 1
            if c == ")":
                break
        if len(alts) < 2:
            raise self.fail("alternation needs at least two alternatives")
        if negated:
            lengths = {_fixed_len(a) for a in alts}
            if None in lengths or len(lengths) != 1 or any(t.kind not in ("lit",) for a in alts for t in a):
                raise self.fail("negated alternatives must be literal and of one length")
        return _Tok("alt", alts=alts, neg=negated)


def _fixed_len(seq: list[_Tok]) -> int | None:
    n = 0
    for t in seq:
        if t.kind in ("lit", "any", "nhi", "nlo"):
            n += 1
        elif t.kind == "bnd":
            n += 1 if t.a == ord("W") else 0
        elif t.kind == "gap" and t.b == t.a:
            n += t.a
        elif t.kind == "alt":
            sub = {_fixed_len(a) for a in t.alts or []}
            if len(sub) != 1 or None in sub:
                return None
            n += sub.pop() or 0
        else:
            return None
    return n


def _min_len(seq: list[_Tok]) -> int:
    n = 0
    for t in seq:
        if t.kind in ("lit", "any", "nhi", "nlo"):
            n += 1
        elif t.kind in ("gap", "bgap"):
            n += t.a
        elif t.kind == "bnd" and t.a == ord("W"):
            n += 1
        elif t.kind == "alt":
            n += min(_min_len(a) for a in t.alts or [[]])
    return n


def _max_len(seq: list[_Tok]) -> int | None:
    n = 0
    for t in seq:
        if t.kind in ("lit", "any", "nhi", "nlo"):
            n += 1
        elif t.kind in ("gap", "bgap"):
            if t.b is None:
                return None
            n += t.b
        elif t.kind == "star":
            return None
        elif t.kind == "bnd":
            n += 2 if t.a == ord("L") else 1
        elif t.kind == "alt":
            sub = [_max_len(a) for a in t.alts or []]
            if None in sub:
                return None
            n += max(x for x in sub if x is not None)
    return n


_BOUNDARY_MIDDLE = {"B": r"[ \n\r./\-<>=@_\"']", "L": r"(?:\r?\n)", "W": "[^A-Za-z0-9]"}
_BOUNDARY_WIDENED = {"B": ".", "L": ".{1,2}"}
_BOUNDARY_EDGE = {
    ("B", "left"): r"(?<![^ \-./<@_])",
    ("B", "right"): r"(?![^\n\r \"'\-/=>_])",
    ("L", "left"): r"(?<![^\n])",
    ("L", "right"): r"(?=\r?\n|\Z)",
    ("W", "left"): r"(?<![A-Za-z0-9])",
    ("W", "right"): r"(?![A-Za-z0-9])",
}


def _emit(seq: list[_Tok], exact: bool, at_start: bool, at_end: bool) -> tuple[str, bool]:
    """Regex text for ``seq``; ``exact`` selects the Python form.  Returns (text, faithful)."""
    parts: list[str] = []
    faithful = True
    last = len(seq) - 1
    for idx, t in enumerate(seq):
        k = t.kind
        if k == "lit":
            parts.append(_hx(t.a))
        elif k == "any":
            parts.append(".")
        elif k == "nhi":
            parts.append(f"[{_hx(t.a << 4)}-{_hx((t.a << 4) | 0xF)}]")
        elif k == "nlo":
            parts.append("[" + "".join(_hx((h << 4) | t.a) for h in range(16)) + "]")
        elif k in ("gap", "bgap"):
            if t.b is None:
                parts.append(f".{{{t.a},}}")
            elif t.b < t.a:
                parts.append(f".{{{t.a}}}(?!)" if exact else f".{{{t.a}}}")
                faithful = False
            elif t.a == t.b:
                parts.append(f".{{{t.a}}}")
            else:
                parts.append(f".{{{t.a},{t.b}}}")
        elif k == "star":
            parts.append(".*?" if exact else ".*")
        elif k == "bnd":
            # ClamAV (matcher-ac.c, checked against clamscan 1.4.6 in tests/test_clamscan_parity.py):
            # at an end of the pattern a boundary checks the byte beyond (a file edge counts);
            # inside the pattern it consumes one byte of its class.
            letter = chr(t.a)
            edge = "left" if idx == 0 and at_start else "right" if idx == last and at_end else ""
            if not edge:
                parts.append(_BOUNDARY_MIDDLE[letter] if exact or letter == "W" else _BOUNDARY_WIDENED[letter])
                faithful = faithful and letter == "W"
            elif not exact:
                faithful = False  # zero-width checks: the prefilter widens them away
            else:
                parts.append(_BOUNDARY_EDGE[letter, edge])
        elif k == "alt":
            alts = t.alts or []
            if t.neg:
                width = _fixed_len(alts[0]) or 1
                if width == 1:
                    parts.append("[^" + "".join(_hx(a[0].a) for a in alts) + "]")
                elif exact:
                    inner = "|".join(_emit(a, exact, False, False)[0] for a in alts)
                    parts.append(f"(?!{inner}).{{{width}}}")
                else:
                    parts.append(f".{{{width}}}")
                    faithful = False
            else:
                texts = []
                for a in alts:
                    text, ok = _emit(a, exact, False, False)
                    faithful = faithful and ok
                    texts.append(text)
                parts.append("(?:" + "|".join(texts) + ")")
    return "".join(parts), faithful


def _split_parts(seq: list[_Tok]) -> list[list[_Tok]]:
    parts: list[list[_Tok]] = [[]]
    for t in seq:
        if t.kind == "star" or (t.kind == "gap" and (t.b is None or t.a != t.b or t.a >= FIXED_GAP_SPLIT)):
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


def _literal_runs(seq: list[_Tok]) -> list[bytes]:
    runs: list[bytes] = []
    cur = bytearray()
    for t in seq:
        if t.kind == "lit":
            cur.append(t.a)
        else:
            if cur:
                runs.append(bytes(cur))
            cur = bytearray()
    if cur:
        runs.append(bytes(cur))
    return runs


_ESCAPED = [f"\\x{b:02x}" for b in range(256)]


def _translate_literal(text: str) -> Translation | None:
    """Fast path for the common all-hex signature (no wildcards): no tokenizing needed."""
    try:
        data = bytes.fromhex(text)
    except ValueError:
        return None
    if len(data) * 2 != len(text):  # fromhex skips whitespace; ClamAV does not
        return None
    if len(data) < 2:
        raise ValueError("body signature shorter than 2 bytes")
    regex = "".join([_ESCAPED[b] for b in data]).encode("ascii")
    return Translation(regex, regex, True, data, len(data), len(data))


def translate(text: str) -> Translation:
    """Parse and validate a hex signature; raise ``ValueError`` with a reason if ClamAV would refuse it."""
    if not text:
        raise ValueError("empty body signature")
    fast = _translate_literal(text)
    if fast is not None:
        return fast
    parser = _Parser(text)
    seq = parser.parse_seq(0)
    if _min_len(seq) < 2:
        raise ValueError("body signature shorter than 2 bytes")
    if seq and (seq[0].kind == "star" or seq[-1].kind == "star"):
        raise ValueError("body signature cannot start or end with '*'")
    # ClamAV's Aho-Corasick trie needs >= 2 consecutive static bytes in every part between splits.
    for part in _split_parts(seq):
        if not any(len(run) >= 2 for run in _literal_runs(part)):
            raise ValueError("every part of a body signature needs at least 2 consecutive literal bytes")
    for idx, t in enumerate(seq):
        if t.kind == "bgap":
            # aa[x-y]HEX or HEX[x-y]aa: exactly one byte on one side, at an end of the signature
            single_left = idx == 1 and seq[0].kind == "lit"
            single_right = idx == len(seq) - 2 and seq[-1].kind == "lit"
            if not (single_left or single_right):
                raise ValueError("[x-y] must join a single byte at one end of the signature to the rest")
    regex, _ = _emit(seq, exact=True, at_start=True, at_end=True)
    prefilter, faithful = _emit(seq, exact=False, at_start=True, at_end=True)
    longest = max(_literal_runs(seq), key=len, default=b"")
    return Translation(regex.encode("ascii"), prefilter.encode("ascii"), faithful, longest, _min_len(seq),
                       _max_len(seq))


def literal_regex(data: bytes) -> bytes:
    """A Hyperscan pattern matching exactly ``data``."""
    return "".join(_hx(b) for b in data).encode("ascii")


def _wide_text(seq: list[_Tok]) -> str:
    out: list[str] = []
    for t in seq:
        k = t.kind
        if k == "lit":
            out.append(f"{t.a:02x}00")
        elif k == "any":
            out.append("??00")
        elif k == "nhi":
            out.append(f"{t.a:x}?00")
        elif k == "nlo":
            out.append(f"?{t.a:x}00")
        elif k in ("gap", "bgap"):
            lo, hi = t.a, t.b
            if k == "bgap":
                out.append(f"[{lo}-{hi}]")
            elif hi is None:
                out.append(f"{{{lo}-}}")
            elif lo == hi:
                out.append(f"{{{lo}}}")
            else:
                out.append(f"{{{lo}-{hi}}}")
        elif k == "star":
            out.append("*")
        elif k == "bnd":
            out.append(f"({chr(t.a)})")
        elif k == "alt":
            inner = "|".join(_wide_text(a) for a in t.alts or [])
            out.append(("!(" if t.neg else "(") + inner + ")")
    return "".join(out)


def widen(text: str) -> str:
    """The hex pattern for ``::w`` (wide) subsignatures: every byte token (``??`` and nibbles too) is
    followed by a NUL byte; gaps, ``*`` and boundaries stay as written (clamscan 1.4.6 agrees:
    tests/test_clamscan_parity.py, ldb scenario)."""
    parser = _Parser(text)
    seq = parser.parse_seq(0)
    return _wide_text(seq)


def _describe_seq(seq: list[_Tok]) -> str:
    out: list[str] = []
    for t in seq:
        k = t.kind
        if k == "lit":
            out.append(chr(t.a))
        elif k == "any":
            out.append("{WILDCARD_IGNORE}")
        elif k == "nhi":
            out.append(f"{{WILDCARD_NIBBLE_HIGH:0x{t.a << 4:x}}}")
        elif k == "nlo":
            out.append(f"{{WILDCARD_NIBBLE_LOW:0x{t.a:x}}}")
        elif k == "star":
            out.append("{WILDCARD_ANY_STRING}")
        elif k in ("gap", "bgap"):
            lo, hi = t.a, t.b
            if hi is None:
                out.append(f"{{WILDCARD_ANY_STRING(LENGTH>={lo})}}")
            elif lo == hi:
                out.append(f"{{WILDCARD_ANY_STRING(LENGTH=={lo})}}")
            elif lo == 0:
                out.append(f"{{WILDCARD_ANY_STRING(LENGTH<={hi})}}")
            else:
                out.append(f"{{WILDCARD_ANY_STRING(LENGTH>={lo}&&<={hi})}}")
        elif k == "alt":
            kind = "EXCLUDING_STRING_ALTERNATIVE" if t.neg else "STRING_ALTERNATIVE"
            out.append(f"{{{kind}:" + "|".join(_describe_seq(a) for a in t.alts or []) + "}")
        # boundaries (B) (L) (W) are not shown, as in sigtool
    return "".join(out)


def describe(text: str) -> str:
    """A body signature in words, the way ``sigtool --decode-sigs`` writes it (bytes as characters,
    wildcards as ``{WILDCARD_...}``)."""
    parser = _Parser(text)
    return _describe_seq(parser.parse_seq(0))
