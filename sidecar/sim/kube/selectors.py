"""Label selectors, parsed as the API server parses the `labelSelector` query parameter (field
selectors: `sidecar.sim.kube.fields`).

Written from apimachinery's grammar (k8s.io/apimachinery/pkg/labels/selector.go), not from the
product's: the emulator is a judge of the product, and a judge that borrows the parser it judges
cannot catch that parser's mistakes. `tests/sim/test_selectors.py` runs both over one table and
lists where they differ.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Keys and values (k8s.io/apimachinery/pkg/util/validation)

_NAME_MAX = 63
_PREFIX_MAX = 253
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_INT64 = re.compile(r"[+-]?[0-9]+")


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a qualified name (`[prefix/]name`), or None if it is one."""
    parts = key.split("/")
    if len(parts) > 2:
        return "a qualified name has at most one '/'"
    if len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return "prefix part must be non-empty"
        if len(prefix) > _PREFIX_MAX or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return "prefix part must be a lowercase RFC 1123 subdomain"
    else:
        name = parts[0]
    if not name:
        return "name part must be non-empty"
    if len(name) > _NAME_MAX:
        return f"name part must be no more than {_NAME_MAX} characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a label value (the empty string is one), or None."""
    if len(value) > _NAME_MAX:
        return f"must be no more than {_NAME_MAX} characters"
    if not _LABEL_VALUE.fullmatch(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


def parse_int64(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64): an optional sign, decimal digits, in range."""
    if not _INT64.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


# ---------------------------------------------------------------------------------------------
# Requirements


class Op(enum.Enum):
    IN = "in"
    NOT_IN = "notin"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = ">"
    LESS_THAN = "<"


_SET_OPS = frozenset({Op.IN, Op.NOT_IN})
_EXACT_OPS = frozenset({Op.EQUALS, Op.DOUBLE_EQUALS, Op.NOT_EQUALS})
_UNARY_OPS = frozenset({Op.EXISTS, Op.DOES_NOT_EXIST})
_ORDER_OPS = frozenset({Op.GREATER_THAN, Op.LESS_THAN})


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op is Op.EXISTS:
            return present
        if self.op is Op.DOES_NOT_EXIST:
            return not present
        if self.op in (Op.IN, Op.EQUALS, Op.DOUBLE_EQUALS):
            return present and labels[self.key] in self.values
        if self.op in _ORDER_OPS:
            # The label must exist and be an integer; an object without it never matches.
            have = parse_int64(labels[self.key]) if present else None
            bound = parse_int64(next(iter(self.values))) if len(self.values) == 1 else None
            if have is None or bound is None:
                return False
            return have > bound if self.op is Op.GREATER_THAN else have < bound
        # NOT_IN and NOT_EQUALS match objects without the label.
        return not present or labels[self.key] not in self.values


def new_requirement(key: str, op: Op, values: Iterable[str]) -> Requirement:
    """labels.NewRequirement: the key, the number of values for `op`, and every value."""
    vals = sorted(set(values))
    problems: list[str] = []
    if (why := label_key_problem(key)) is not None:
        problems.append(f"key: Invalid value: {key!r}: {why}")
    if op in _SET_OPS and not vals:
        problems.append("values: for 'in', 'notin' operators, values set can't be empty")
    elif op in _EXACT_OPS and len(vals) != 1:
        problems.append("values: exact-match compatibility requires one single value")
    elif op in _UNARY_OPS and vals:
        problems.append("values: values set must be empty for exists and does not exist")
    elif op in _ORDER_OPS:
        if len(vals) != 1:
            problems.append("values: for 'Gt', 'Lt' operators, exactly one value is required")
        for v in vals:
            if parse_int64(v) is None:
                problems.append(
                    f"values: Invalid value: {v!r}: for 'Gt', 'Lt' operators, "
                    "the value must be an integer"
                )
    for v in vals:
        if (why := label_value_problem(v)) is not None:
            problems.append(f"values[{key}]: Invalid value: {v!r}: {why}")
    if problems:
        raise SelectorError("; ".join(problems))
    return Requirement(key, op, frozenset(vals))


# ---------------------------------------------------------------------------------------------
# The labelSelector lexer and parser


class _Tok(enum.Enum):
    END = "end of string"
    CLOSE = ")"
    COMMA = ","
    NOT = "!"
    DOUBLE_EQUALS = "=="
    EQUALS = "="
    GREATER = ">"
    IDENT = "identifier"
    IN = "in"
    LESS = "<"
    NOT_EQUALS = "!="
    NOT_IN = "notin"
    OPEN = "("


_LITERALS = {t.value: t for t in _Tok if t not in (_Tok.END, _Tok.IDENT)}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")  # only these; any other character belongs to a word
_OPERATORS = {
    _Tok.IN: Op.IN,
    _Tok.NOT_IN: Op.NOT_IN,
    _Tok.EQUALS: Op.EQUALS,
    _Tok.DOUBLE_EQUALS: Op.DOUBLE_EQUALS,
    _Tok.NOT_EQUALS: Op.NOT_EQUALS,
    _Tok.GREATER: Op.GREATER_THAN,
    _Tok.LESS: Op.LESS_THAN,
}


def _lex(text: str) -> list[tuple[_Tok, str]]:
    # Go reads a NUL byte as the end of the input: nothing after it is seen.
    text = text.split("\0", 1)[0]
    items: list[tuple[_Tok, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i == n:
            items.append((_Tok.END, ""))
            return items
        start = i
        if text[i] in _SPECIAL:
            # The longest run of special characters that is still an operator: `!=`, `==`.
            i += 1
            while i < n and text[i] in _SPECIAL and text[start : i + 1] in _LITERALS:
                i += 1
            items.append((_LITERALS[text[start:i]], text[start:i]))
            continue
        while i < n and text[i] not in _SPECIAL and text[i] not in _WHITESPACE:
            i += 1
        word = text[start:i]
        items.append((_LITERALS.get(word, _Tok.IDENT), word))


class _Parser:
    """Recursive descent over the scanned tokens. `in` and `notin` are keywords only where
    an operator may stand: as a key or a value they are plain words (`in in (in)`)."""

    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def _peek(self, *, operator: bool = False) -> tuple[_Tok, str]:
        tok, lit = self.items[self.pos]
        if not operator and tok in (_Tok.IN, _Tok.NOT_IN):
            tok = _Tok.IDENT
        return tok, lit

    def _take(self, *, operator: bool = False) -> tuple[_Tok, str]:
        item = self._peek(operator=operator)
        self.pos += 1
        return item

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self._peek()
            if tok is _Tok.END:
                return reqs
            if tok not in (_Tok.IDENT, _Tok.NOT):
                raise SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")
            try:
                reqs.append(self._requirement())
            except SelectorError as exc:
                raise SelectorError(f"unable to parse requirement: {exc}") from None
            tok, lit = self._take()
            if tok is _Tok.END:
                return reqs
            if tok is not _Tok.COMMA:
                raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
            tok, lit = self._peek()
            if tok not in (_Tok.IDENT, _Tok.NOT):
                raise SelectorError(f"found '{lit}', expected: identifier after ','")

    def _requirement(self) -> Requirement:
        negated = False
        tok, key = self._take()
        if tok is _Tok.NOT:
            negated = True
            tok, key = self._take()
        if tok is not _Tok.IDENT:
            raise SelectorError(f"found '{key}', expected: identifier")
        if (why := label_key_problem(key)) is not None:
            raise SelectorError(f"Invalid value: {key!r}: {why}")
        if negated or self._peek()[0] in (_Tok.END, _Tok.COMMA):
            return new_requirement(key, Op.DOES_NOT_EXIST if negated else Op.EXISTS, ())
        tok, lit = self._take(operator=True)
        op = _OPERATORS.get(tok)
        if op is None:
            expected = ", ".join(o.value for o in _OPERATORS.values())
            raise SelectorError(f"found '{lit}', expected: {expected}")
        return new_requirement(key, op, self._set() if op in _SET_OPS else self._exact_value())

    def _set(self) -> set[str]:
        """`(a,b)`; empty members are the empty string: `()`, `(,a)`, `(a,,b)`, `(a,)`
        (but `(a,,)` is an error, as it is on the server)."""
        tok, lit = self._take()
        if tok is not _Tok.OPEN:
            raise SelectorError(f"found '{lit}' expected: '('")
        tok, lit = self._peek()
        if tok is _Tok.CLOSE:
            self._take()
            return {""}
        if tok not in (_Tok.IDENT, _Tok.COMMA):
            raise SelectorError(f"found '{lit}', expected: ',', ')' or identifier")
        values = self._members()
        if self._take()[0] is not _Tok.CLOSE:
            raise SelectorError(f"found '{lit}', expected: ')'")
        return values

    def _members(self) -> set[str]:
        """The members up to (not including) the closing parenthesis."""
        values: set[str] = set()
        while True:
            tok, lit = self._take()
            if tok is _Tok.IDENT:
                values.add(lit)
                after, lit = self._peek()
                if after is _Tok.CLOSE:
                    return values
                if after is not _Tok.COMMA:
                    raise SelectorError(f"found '{lit}', expected: ',' or ')'")
            elif tok is _Tok.COMMA:
                if not values:  # `(,`
                    values.add("")
                after, _ = self._peek()
                if after is _Tok.CLOSE:  # `,)`
                    values.add("")
                    return values
                if after is _Tok.COMMA:  # `,,`: the second comma is taken here
                    self._take()
                    values.add("")
            else:
                raise SelectorError(f"found '{lit}', expected: ',', or identifier")

    def _exact_value(self) -> tuple[str]:
        """One value; nothing before `,` or the end is the empty string (`k=`)."""
        tok, lit = self._peek()
        if tok in (_Tok.END, _Tok.COMMA):
            return ("",)
        tok, lit = self._take()
        if tok is not _Tok.IDENT:
            raise SelectorError(f"found '{lit}', expected: identifier")
        return (lit,)


def parse_label_selector(text: str | None) -> list[Requirement]:
    """The `labelSelector` query parameter as requirements (sorted by key, as the server
    sorts them). Raises SelectorError with the server's kind of message."""
    if not text:
        return []
    return sorted(_Parser(text).parse(), key=lambda r: r.key)


_EXPRESSION_OPS = {
    "In": Op.IN,
    "NotIn": Op.NOT_IN,
    "Exists": Op.EXISTS,
    "DoesNotExist": Op.DOES_NOT_EXIST,
}


def selector_from_label_selector(sel: Mapping[str, Any] | None) -> list[Requirement]:
    """A `metav1.LabelSelector` (matchLabels + matchExpressions) as requirements, validated
    as metav1.LabelSelectorAsSelector validates them."""
    if not sel:
        return []
    reqs = [
        new_requirement(str(k), Op.EQUALS, (str(v),))
        for k, v in (sel.get("matchLabels") or {}).items()
    ]
    for expr in sel.get("matchExpressions") or []:
        op = _EXPRESSION_OPS.get(str(expr.get("operator")))
        if op is None:
            raise SelectorError(f"{expr.get('operator')!r} is not a valid label selector operator")
        reqs.append(new_requirement(str(expr.get("key")), op, expr.get("values") or []))
    return reqs


def labels_match(reqs: Iterable[Requirement], labels: Mapping[str, str] | None) -> bool:
    lab = labels or {}
    return all(r.matches(lab) for r in reqs)
