"""The PATCH body formats kube-apiserver accepts, applied to plain JSON objects.

Strategic merge patch is applied as a JSON merge patch (RFC 7386). The two differ only for lists:
a strategic merge patch merges list items by their merge key (containers by `name`, for example)
and understands `$patch` directives, while a merge patch replaces the whole list. A test that
patches a list inside a pod or service through the stand-in therefore gets the whole list
replaced, where a real server would merge it.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from tests.kube_standin import errors

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH_TYPES = ("application/apply-patch+yaml", "application/apply-patch+cbor")
SUPPORTED_PATCH_TYPES = (MERGE_PATCH, JSON_PATCH, STRATEGIC_MERGE_PATCH)


def merge_patch(target: Any, patch: Any) -> Any:
    """Return `target` with the RFC 7386 merge patch applied; `target` is not changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(target: dict[str, Any], patch: Any, *, content_type: str) -> dict[str, Any]:
    """Return `target` with a PATCH body of the given content type applied.

    Raises ApiError: 415 for server-side apply and unknown content types, 400 for a malformed
    patch document, 422 for a JSON patch that cannot be applied (a failed `test`, a missing path).
    """
    if content_type in APPLY_PATCH_TYPES:
        raise errors.ApiError(
            code=415,
            reason="UnsupportedMediaType",
            message=f"the stand-in does not implement server-side apply ({content_type}); use a merge or JSON patch",
        )
    if content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        if not isinstance(patch, dict):
            raise errors.bad_request(f"a {content_type} body must be a JSON object, got {type(patch).__name__}")
        return merge_patch(target, patch)
    if content_type == JSON_PATCH:
        return _apply_json_patch(target, patch)
    raise errors.ApiError(
        code=415,
        reason="UnsupportedMediaType",
        message=f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(SUPPORTED_PATCH_TYPES)}; got {content_type!r}",
    )


def _apply_json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise errors.bad_request(f"a {JSON_PATCH} body must be a JSON array of operations")
    try:
        result = jsonpatch.JsonPatch(operations).apply(target, in_place=False)
    except jsonpatch.InvalidJsonPatch as err:
        raise errors.bad_request(f"invalid JSON patch: {err}") from err
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as err:
        raise errors.ApiError(code=422, reason="Invalid", message=f"the JSON patch cannot be applied: {err}") from err
    if not isinstance(result, dict):
        raise errors.bad_request("the JSON patch replaced the whole object with a value that is not an object")
    return result
