"""Label and field selectors, parsed as the API server parses the `labelSelector` and
`fieldSelector` query parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.grammar import parse_label_selector as config_parse_label_selector


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "<", ">"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        if self.op in ("<", ">"):
            # Gt/Lt: the label must exist and parse as an integer, as the server requires.
            try:
                have, bound = int(labels[self.key]), int(next(iter(self.values)))
            except (KeyError, ValueError, StopIteration):
                return False
            return have < bound if self.op == "<" else have > bound
        # "!=" and "notin" match objects without the label, as the server does.
        return not present or labels[self.key] not in self.values


def parse_label_selector(text: str | None) -> list[Requirement]:
    """The `labelSelector` query parameter, parsed by the same grammar the aggregator
    validates `WATCH_SELECTOR` with (sidecar.config), so the two never drift apart."""
    if not text:
        return []
    try:
        parsed = config_parse_label_selector(text)
    except ValueError as exc:
        raise SelectorError(f"unable to parse requirement: {exc}") from None
    return [
        Requirement(key, "=" if op == "==" else op, frozenset(values)) for key, op, values in parsed
    ]


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
