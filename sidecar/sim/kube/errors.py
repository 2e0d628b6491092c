"""The API's failures: `ApiError` and the `Status` objects the server sends for them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sidecar.sim.kube.objects import Obj
from sidecar.sim.kube.resources import ResourceType


class ApiError(Exception):
    """An API failure; `status()` is the `Status` object the server sends."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        doc: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            doc["details"] = self.details
        return doc


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{rt.qualified} "{name}" not found',
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


class FieldErrorType(Enum):
    """field.ErrorType: the cause's reason and the words its message starts with."""

    REQUIRED = ("FieldValueRequired", "Required value")
    INVALID = ("FieldValueInvalid", "Invalid value")
    NOT_SUPPORTED = ("FieldValueNotSupported", "Unsupported value")
    FORBIDDEN = ("FieldValueForbidden", "Forbidden")
    TOO_LONG = ("FieldValueTooLong", "Too long")

    @property
    def reason(self) -> str:
        return self.value[0]

    @property
    def words(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class FieldError:
    """One validation failure, rendered as apimachinery's field.Error renders it."""

    type: FieldErrorType
    field: str
    detail: str = ""
    # The bad value as Go prints it (`-1`, `"x"`); None where the type prints no value.
    value: str | None = None

    def body(self) -> str:
        text = self.type.words
        if self.value is not None:
            text += f": {self.value}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def invalid(rt: ResourceType, name: str, causes: Sequence[FieldError]) -> ApiError:
    # One cause prints bare; several as an aggregate, `[a, b]`, as utilerrors does.
    text = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(map(str, causes)) + "]"
    kind = rt.kind if not rt.group else f"{rt.kind}.{rt.group}"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {text}',
        {
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [
                {"reason": c.type.reason, "message": c.body(), "field": c.field} for c in causes
            ],
        },
    )


def expired(from_rv: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {from_rv} ({oldest})")
