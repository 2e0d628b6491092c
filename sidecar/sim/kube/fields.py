"""Field selectors, parsed as the API server parses the `fieldSelector` query parameter:
written from apimachinery's k8s.io/apimachinery/pkg/fields/selector.go (`=`, `==`, `!=`,
backslash escapes in values), like the label selectors next to it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sidecar.sim.kube.selectors import SelectorError


class FieldRequirement(NamedTuple):
    field: str
    equal: bool  # `=` and `==` are True, `!=` is False
    value: str


FieldPredicate = Callable[[dict[str, Any]], bool]

# The field labels the emulator serves, for every kind (the server's set depends on the kind).
_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
    "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
    "status.phase": lambda o: str((o.get("status") or {}).get("phase", "")),
    "involvedObject.name": lambda o: str((o.get("involvedObject") or {}).get("name", "")),
    "involvedObject.kind": lambda o: str((o.get("involvedObject") or {}).get("kind", "")),
}
# `==` before `=`, so `a==b` does not leave `=b` as the value.
_FIELD_OPERATORS = (("!=", False), ("==", True), ("=", True))


def _split_terms(text: str) -> list[str]:
    """Split on commas, except escaped ones (`\\,`), which stay in the term as they are."""
    terms: list[str] = []
    start, escaped = 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, bool, str] | None:
    """At the first operator (the field name has no escapes); None if there is none."""
    for i in range(len(term)):
        for op, equal in _FIELD_OPERATORS:
            if term.startswith(op, i):
                return term[:i], equal, term[i + len(op) :]
    return None


def unescape_field_value(text: str) -> str:
    """`\\\\`, `\\,` and `\\=` are the escapes; a bare `,` or `=` in a value is an error."""
    out: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            if ch not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            raise SelectorError(f"invalid field selector: unescaped character in value: {ch}")
        else:
            out.append(ch)
    if escaped:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(text: str | None) -> list[FieldRequirement]:
    """`metadata.name=web,status.phase!=Failed`. No blank is trimmed (a field named
    ` metadata.name` is not supported); empty terms are skipped."""
    if not text:
        return []
    out: list[FieldRequirement] = []
    for term in sorted(_split_terms(text)):
        if not term:
            continue
        split = _split_term(term)
        if split is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        field, equal, raw = split
        value = unescape_field_value(raw)
        if field not in _FIELDS:
            raise SelectorError(f"field label not supported: {field}")
        out.append(FieldRequirement(field, equal, value))
    return out


def fields_match(reqs: Iterable[FieldRequirement], obj: dict[str, Any]) -> bool:
    return all((_FIELDS[r.field](obj) == r.value) == r.equal for r in reqs)


def field_selector_name(reqs: Iterable[FieldRequirement]) -> str | None:
    """The name a `metadata.name=X` selector pins, so a list can skip the scan."""
    for r in reqs:
        if r.field == "metadata.name" and r.equal:
            return r.value
    return None
