"""Logical expressions of ``.ldb`` signatures (and the triggers of PCRE subsignatures).

Grammar (ClamAV's ``LogicalSignatures`` manual, behaviour checked against clamscan 1.4.6)::

    expr := term | term OP expr          OP  := '&' | '|'
    term := INDEX [MOD] | '(' expr ')' [MOD]
    MOD  := ('=' | '>' | '<') X [',' Y]

There is no precedence: an expression splits at its *first* top-level operator, so ``a&b|c`` is
``a&(b|c)`` (clamscan agrees).

An expression is stored as nested tuples of ints and strings (cheap to marshal into the compiled
database, never code):

* ``(INDEX, index, mod)`` for a subsignature;
* ``(AND, left, right, mod)`` / ``(OR, left, right, mod)`` for a block;

``mod`` is ``()`` or ``(op, x, y)`` with ``op`` one of ``"=" ">" "<"`` and ``y`` = -1 when absent.

Evaluation takes the match count of every subsignature.  A subsignature is true when its count is
above zero; a block's count is the sum of the counts of its true operands and it remembers which
distinct subsignatures made it true.  ``A=X`` / ``A>X`` / ``A<X`` compare the count (``A=0`` is
negation, ``A<X`` is true when nothing matched); ``,Y`` also asks for at least ``Y`` distinct
subsignatures.
"""

from __future__ import annotations

from collections.abc import Sequence

INDEX = 0
AND = 1
OR = 2

Expr = tuple  # see the module docstring

MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, reason: str) -> ValueError:
        return ValueError(f"bad logical expression {self.s!r}: {reason} at position {self.i}")

    def number(self) -> int:
        start = self.i
        while self.i < len(self.s) and self.s[self.i].isdigit():
            self.i += 1
        if start == self.i:
            raise self.fail("number expected")
        return int(self.s[start:self.i])

    def modifier(self) -> tuple:
        if self.i >= len(self.s) or self.s[self.i] not in "=<>":
            return ()
        op = self.s[self.i]
        self.i += 1
        x = self.number()
        y = -1
        if self.i < len(self.s) and self.s[self.i] == ",":
            self.i += 1
            y = self.number()
        return (op, x, y)

    def term(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise self.fail("nested too deeply")
        if self.i < len(self.s) and self.s[self.i] == "(":
            self.i += 1
            inner = self.expr(depth + 1)
            if self.i >= len(self.s) or self.s[self.i] != ")":
                raise self.fail("')' expected")
            self.i += 1
            mod = self.modifier()
            if not mod:
                return inner
            if inner[0] == INDEX:
                return (INDEX, inner[1], mod) if not inner[2] else (OR, inner, None, mod)
            return (inner[0], inner[1], inner[2], mod)
        index = self.number()
        return (INDEX, index, self.modifier())

    def expr(self, depth: int) -> Expr:
        left = self.term(depth)
        if self.i < len(self.s) and self.s[self.i] in "&|":
            op = AND if self.s[self.i] == "&" else OR
            self.i += 1
            right = self.expr(depth + 1)
            return (op, left, right, ())
        return left


def parse_expression(text: str) -> Expr:
    """Parse ``text``; raise ``ValueError`` naming the problem."""
    if not text:
        raise ValueError("empty logical expression")
    p = _Parser(text)
    tree = p.expr(0)
    if p.i != len(text):
        raise p.fail(f"unexpected {text[p.i]!r}")
    return tree


def indexes(tree: Expr) -> set[int]:
    """Every subsignature index the expression refers to."""
    if tree[0] == INDEX:
        return {tree[1]}
    out = indexes(tree[1])
    if tree[2] is not None:
        out |= indexes(tree[2])
    return out


def _check(mod: tuple, count: int, distinct: int) -> bool:
    op, x, y = mod
    if op == "=":
        ok = count == x
    elif op == ">":
        ok = count > x
    else:
        ok = count < x
    return ok and (y < 0 or distinct >= y)


def _eval(tree: Expr, counts: Sequence[int]) -> tuple[bool, int, frozenset[int]]:
    kind = tree[0]
    if kind == INDEX:
        index, mod = tree[1], tree[2]
        count = counts[index] if index < len(counts) else 0
        matched = frozenset((index,)) if count else frozenset()
        if mod:
            return _check(mod, count, len(matched)), count, matched
        return count > 0, count, matched
    left = _eval(tree[1], counts)
    right = _eval(tree[2], counts) if tree[2] is not None else (False, 0, frozenset())
    count = (left[1] if left[0] else 0) + (right[1] if right[0] else 0)
    matched = (left[2] if left[0] else frozenset()) | (right[2] if right[0] else frozenset())
    value = (left[0] and right[0]) if kind == AND else (left[0] or right[0])
    mod = tree[3]
    if mod:
        # a modified block counts every match of its operands, true or not
        count = left[1] + right[1]
        matched = left[2] | right[2]
        return _check(mod, count, len(matched)), count, matched
    return value, count, matched


def evaluate(tree: Expr, counts: Sequence[int]) -> bool:
    """Whether the expression holds for these per-subsignature match counts."""
    return _eval(tree, counts)[0]


def describe(tree: Expr) -> str:
    """The expression written back out, fully parenthesised (for ``explain``)."""
    kind = tree[0]
    if kind == INDEX:
        text = str(tree[1])
        mod = tree[2]
    else:
        right = describe(tree[2]) if tree[2] is not None else ""
        text = f"({describe(tree[1])}{'&' if kind == AND else '|'}{right})" if right else describe(tree[1])
        mod = tree[3]
    if mod:
        text += f"{mod[0]}{mod[1]}" + (f",{mod[2]}" if mod[2] >= 0 else "")
    return text
