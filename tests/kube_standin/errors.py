"""API errors of the stand-in, each rendered as the `Status` object a kube-apiserver returns."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any


class ApiError(Exception):
    """An error that the HTTP layer sends as a `Status` body with `code` as the HTTP status."""

    def __init__(
        self,
        *,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def to_status(self) -> dict[str, Any]:
        """Return the error as a `metav1.Status` object."""
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def qualified_resource(group: str, plural: str) -> str:
    """Return `plural.group`, or only `plural` for the core group, as kube-apiserver names resources in messages."""
    return f"{plural}.{group}" if group else plural


def _details(group: str, plural: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        code=HTTPStatus.NOT_FOUND,
        reason="NotFound",
        message=f'{qualified_resource(group, plural)} "{name}" not found',
        details=_details(group, plural, name),
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        code=HTTPStatus.CONFLICT,
        reason="AlreadyExists",
        message=f'{qualified_resource(group, plural)} "{name}" already exists',
        details=_details(group, plural, name),
    )


def conflict(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        code=HTTPStatus.CONFLICT,
        reason="Conflict",
        message=(
            f'Operation cannot be fulfilled on {qualified_resource(group, plural)} "{name}": '
            "the object has been modified; please apply your changes to the latest version and try again"
        ),
        details=_details(group, plural, name),
    )


def invalid(*, group: str, kind: str, name: str, causes: Sequence[str]) -> ApiError:
    """Return a 422 Invalid error whose `details.causes` carry one entry per message."""
    qualified_kind = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": "FieldValueInvalid", "message": cause} for cause in causes],
    }
    if group:
        details["group"] = group
    return ApiError(
        code=HTTPStatus.UNPROCESSABLE_ENTITY,
        reason="Invalid",
        message=f'{qualified_kind} "{name}" is invalid: [{", ".join(causes)}]',
        details=details,
    )


def bad_request(message: str) -> ApiError:
    return ApiError(code=HTTPStatus.BAD_REQUEST, reason="BadRequest", message=message)


def gone(message: str) -> ApiError:
    """Return the 410 error that a watch sends when its `resourceVersion` is older than the kept history."""
    return ApiError(code=HTTPStatus.GONE, reason="Expired", message=message)


def resource_not_served() -> ApiError:
    return ApiError(
        code=HTTPStatus.NOT_FOUND,
        reason="NotFound",
        message="the server could not find the requested resource",
        details={},
    )


# The `reason` kube-apiserver puts in a Status for each HTTP status.
REASON_BY_CODE: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_error(code: int, message: str | None = None, reason: str | None = None) -> ApiError:
    """Return an error for any HTTP status, with the usual reason for that status unless `reason` is given."""
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = f"HTTP {code}"
    return ApiError(
        code=code,
        reason=reason or REASON_BY_CODE.get(code, "Unknown"),
        message=message or f"{phrase} (injected by the test)",
    )
