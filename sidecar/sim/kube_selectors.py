"""Label and field selectors, parsed as the API server parses the `labelSelector` and
`fieldSelector` query parameters."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label, as the server does.
        return not present or labels[self.key] not in self.values


_SET_RE = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside an `in (...)` value set."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _check_key(key: str) -> str:
    if not _LABEL_KEY_RE.match(key):
        raise SelectorError(f"invalid label key {key!r}")
    return key


def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text:
        return []
    reqs: list[Requirement] = []
    for part in _split_top_level(text):
        m = _SET_RE.match(part)
        if m:
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(_check_key(m.group(1)), m.group(2), values))
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, _, value = part.partition(op)
                norm = "!=" if op == "!=" else "="
                reqs.append(Requirement(_check_key(key.strip()), norm, frozenset({value.strip()})))
                break
        else:
            if part.startswith("!"):
                reqs.append(Requirement(_check_key(part[1:].strip()), "!"))
            else:
                reqs.append(Requirement(_check_key(part), "exists"))
    return reqs


def selector_from_label_selector(sel: Mapping[str, Any] | None) -> list[Requirement]:
    """A `metav1.LabelSelector` (matchLabels + matchExpressions) as requirements."""
    if not sel:
        return []
    reqs = [
        Requirement(k, "=", frozenset({str(v)})) for k, v in (sel.get("matchLabels") or {}).items()
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in sel.get("matchExpressions") or []:
        op = ops.get(str(expr.get("operator")))
        if op is None:
            raise SelectorError(f"invalid operator {expr.get('operator')!r}")
        reqs.append(Requirement(str(expr["key"]), op, frozenset(expr.get("values") or [])))
    return reqs


def labels_match(reqs: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    lab = labels or {}
    return all(r.matches(lab) for r in reqs)


FieldPredicate = Callable[[dict[str, Any]], bool]

_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
    "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
    "status.phase": lambda o: str((o.get("status") or {}).get("phase", "")),
    "involvedObject.name": lambda o: str((o.get("involvedObject") or {}).get("name", "")),
    "involvedObject.kind": lambda o: str((o.get("involvedObject") or {}).get("kind", "")),
}


def parse_field_selector(text: str | None) -> list[tuple[str, bool, str]]:
    """`metadata.name=web,status.phase!=Failed` as (field, equal, value) triples."""
    if not text:
        return []
    out: list[tuple[str, bool, str]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        for op in ("!=", "==", "="):
            if op in part:
                field, _, value = part.partition(op)
                field = field.strip()
                if field not in _FIELDS:
                    raise SelectorError(f'field label not supported: "{field}"')
                out.append((field, op != "!=", value.strip()))
                break
        else:
            raise SelectorError(f"invalid field selector: {part!r}")
    return out


def fields_match(reqs: list[tuple[str, bool, str]], obj: dict[str, Any]) -> bool:
    return all((_FIELDS[f](obj) == v) == eq for f, eq, v in reqs)


def field_selector_name(reqs: list[tuple[str, bool, str]]) -> str | None:
    """The name a `metadata.name=X` selector pins, so a list can skip the scan."""
    for f, eq, v in reqs:
        if f == "metadata.name" and eq:
            return v
    return None
