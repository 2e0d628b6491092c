"""The validation the real API server applies that the emulator models: Deployments and
ReplicaSets (after k8s.io/kubernetes pkg/apis/apps/validation) and the ConfigMap size limit
(pkg/apis/core/validation). Everything else is accepted as it is."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from sidecar.sim.kube.errors import FieldError, FieldErrorType, invalid
from sidecar.sim.kube.objects import Obj
from sidecar.sim.kube.resources import ResourceType
from sidecar.sim.kube.selectors import SelectorError, labels_match, selector_from_label_selector

# core.MaxSecretSize, which ConfigMaps share: data plus binaryData (decoded), in bytes.
MAX_CONFIGMAP_BYTES = 1024 * 1024
_PERCENT = re.compile(r"[0-9]+%")
_PERCENT_MSG = (
    "a valid percent string must be a numeric string followed by an ending '%' "
    "(e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"
)
_NONNEGATIVE = "must be greater than or equal to 0"

_INVALID = FieldErrorType.INVALID


def validate(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    """Raise the 422 the real server answers for `obj` (`old`: the stored object on update)."""
    name = str(obj.get("metadata", {}).get("name", ""))
    if rt.plural == "configmaps":
        causes = _configmap_causes(obj)
    elif rt.plural in ("deployments", "replicasets"):
        causes = _workload_causes(rt, obj, old)
    else:
        return
    if causes:
        raise invalid(rt, name, causes)


def _configmap_causes(obj: Obj) -> list[FieldError]:
    total = 0
    for value in (obj.get("data") or {}).values():
        total += len(str(value).encode())
    for value in (obj.get("binaryData") or {}).values():
        try:
            total += len(base64.b64decode(str(value), validate=True))
        except (binascii.Error, ValueError):
            total += len(str(value))  # not base64: the real server fails decoding instead
    if total > MAX_CONFIGMAP_BYTES:
        # field.TooLong(field.NewPath(""), ...), which the server prints as `[]`.
        return [
            FieldError(
                FieldErrorType.TOO_LONG, "[]", f"must have at most {MAX_CONFIGMAP_BYTES} bytes"
            )
        ]
    return []


def _workload_causes(rt: ResourceType, obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError(FieldErrorType.REQUIRED, "spec")]
    causes: list[FieldError] = []
    causes += _nonnegative(spec, "replicas")
    selector = spec.get("selector")
    template = spec.get("template") or {}
    tlabels = (template.get("metadata") or {}).get("labels") or {}
    try:
        reqs = selector_from_label_selector(selector)
    except SelectorError as exc:
        return [FieldError(_INVALID, "spec.selector", str(exc), _go(selector))]
    if not reqs:
        causes.append(FieldError(FieldErrorType.REQUIRED, "spec.selector"))
    elif not labels_match(reqs, tlabels):
        causes.append(
            FieldError(
                _INVALID,
                "spec.template.metadata.labels",
                "`selector` does not match template `labels`",
                json.dumps(tlabels, separators=(",", ":")),
            )
        )
    if not (template.get("spec") or {}).get("containers"):
        causes.append(FieldError(FieldErrorType.REQUIRED, "spec.template.spec.containers"))
    if rt.plural == "deployments":
        causes += _strategy_causes(spec.get("strategy") or {})
        causes += _nonnegative(spec, "minReadySeconds")
        causes += _nonnegative(spec, "revisionHistoryLimit")
        causes += _nonnegative(spec, "progressDeadlineSeconds")
    else:
        causes += _nonnegative(spec, "minReadySeconds")
    if old is not None and old.get("spec", {}).get("selector") != selector:
        causes.append(
            FieldError(_INVALID, "spec.selector", "field is immutable", json.dumps(selector))
        )
    return causes


def _nonnegative(spec: Obj, key: str) -> list[FieldError]:
    """ValidateNonnegativeField over an optional integer field of the spec."""
    if key not in spec:
        return []
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return [FieldError(_INVALID, f"spec.{key}", _NONNEGATIVE, _go(value))]
    return []


def _strategy_causes(strategy: Obj) -> list[FieldError]:
    path = "spec.strategy"
    kind = strategy.get("type", "RollingUpdate")
    ru = strategy.get("rollingUpdate")
    if kind == "Recreate":
        if ru is not None:
            return [
                FieldError(
                    FieldErrorType.FORBIDDEN,
                    f"{path}.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                )
            ]
        return []
    if kind != "RollingUpdate":
        return [
            FieldError(
                FieldErrorType.NOT_SUPPORTED,
                path,
                'supported values: "Recreate", "RollingUpdate"',
                _go(kind),
            )
        ]
    if not isinstance(ru, dict):
        return []  # defaulted to 25%/25% before validation
    path += ".rollingUpdate"
    unavailable, surge = ru.get("maxUnavailable", 0), ru.get("maxSurge", 0)
    causes = _int_or_percent(unavailable, f"{path}.maxUnavailable")
    causes += _int_or_percent(surge, f"{path}.maxSurge")
    if _int_or_percent_value(unavailable) == 0 and _int_or_percent_value(surge) == 0:
        causes.append(
            FieldError(
                _INVALID,
                f"{path}.maxUnavailable",
                "may not be 0 when `maxSurge` is 0",
                _go_int_or_string(unavailable),
            )
        )
    percent = _percent(unavailable)
    if percent is not None and percent > 100:
        causes.append(
            FieldError(
                _INVALID,
                f"{path}.maxUnavailable",
                "must not be greater than 100%",
                _go_int_or_string(unavailable),
            )
        )
    return causes


def _int_or_percent(value: Any, path: str) -> list[FieldError]:
    """ValidatePositiveIntOrPercent: a string must be a percentage, an integer not negative."""
    if isinstance(value, str):
        if _PERCENT.fullmatch(value) is None:
            return [FieldError(_INVALID, path, _PERCENT_MSG, _go_int_or_string(value))]
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [FieldError(_INVALID, path, _NONNEGATIVE, str(value))] if value < 0 else []
    return [FieldError(_INVALID, path, "must be an integer or percentage (e.g '5%%')", _go(value))]


def _percent(value: Any) -> int | None:
    if isinstance(value, str) and _PERCENT.fullmatch(value):
        return int(value[:-1])
    return None


def _int_or_percent_value(value: Any) -> int | None:
    """getIntOrPercentValue: the percentage's number, else the integer (a string that is
    neither parses as an integer, as IntOrString.IntValue does; 0 when it does not parse)."""
    percent = _percent(value)
    if percent is not None:
        return percent
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return 0
    return None


def _go(value: Any) -> str:
    """A bad value as field.Error prints a simple one: numbers bare, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"))


def _go_int_or_string(value: Any) -> str:
    """An IntOrString, as `%#v` prints it (the error's fallback for a struct)."""
    if isinstance(value, str):
        return f"intstr.IntOrString{{Type:1, IntVal:0, StrVal:{json.dumps(value)}}}"
    return f'intstr.IntOrString{{Type:0, IntVal:{_go(value)}, StrVal:""}}'
