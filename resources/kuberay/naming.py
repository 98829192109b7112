"""Kubernetes names and label values derived from Dagster run data, and the checks the API server applies to them.

The rules follow ``k8s.io/apimachinery/pkg/util/validation``: a DNS-1035 label
(object names KubeRay accepts for a RayCluster), a DNS-1123 subdomain (label key
prefixes), a qualified name (label and annotation keys) and a label value.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse

from resources.errors import InvalidRequestError

# KubeRay rejects longer RayCluster names (MaxRayClusterNameLength) so that the name plus
# its longest service suffix, "-serve-svc", still fits a 63-character DNS label.
MAX_CLUSTER_NAME_LENGTH = 53
MAX_LABEL_VALUE_LENGTH = 63
MAX_DNS1035_LABEL_LENGTH = 63
MAX_DNS1123_SUBDOMAIN_LENGTH = 253
MAX_QUALIFIED_NAME_LENGTH = 63

# 10 hex digits are 40 bits: two run ids collide with probability about 1e-12.
HASH_LENGTH = 10

_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = _QUALIFIED_NAME


def short_hash(value: str) -> str:
    """Return the first ``HASH_LENGTH`` hex digits of the SHA-256 of ``value``."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def is_dns1035_label(value: str) -> bool:
    """Check whether ``value`` is a DNS-1035 label: lowercase alphanumerics and '-', a letter first, 63 at most."""
    return len(value) <= MAX_DNS1035_LABEL_LENGTH and _DNS1035_LABEL.fullmatch(value) is not None


def is_dns1123_label(value: str) -> bool:
    """Check whether ``value`` is a DNS-1123 label, the rule for namespace names, which may start with a digit."""
    return len(value) <= MAX_DNS1035_LABEL_LENGTH and _DNS1123_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    """Check whether ``value`` is a DNS-1123 subdomain: dot-separated DNS-1123 labels, 253 characters at most."""
    if not value or len(value) > MAX_DNS1123_SUBDOMAIN_LENGTH:
        return False
    return all(_DNS1123_LABEL.fullmatch(part) for part in value.split("."))


def is_qualified_name(value: str) -> bool:
    """Check whether ``value`` is a label or annotation key: an optional DNS-1123 subdomain and '/', then a name."""
    prefix, slash, name = value.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= MAX_QUALIFIED_NAME_LENGTH and _QUALIFIED_NAME.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    """Check whether ``value`` is a valid label value. The empty string is valid."""
    return value == "" or (len(value) <= MAX_LABEL_VALUE_LENGTH and _LABEL_VALUE.fullmatch(value) is not None)


def check_namespace(value: object, *, field: str) -> None:
    """Raise ``InvalidRequestError`` naming ``field`` unless ``value`` is a valid namespace name."""
    if not isinstance(value, str) or not is_dns1123_label(value):
        raise InvalidRequestError(
            field,
            f"{value!r} is not a valid namespace name",
            "Use lowercase letters, digits and '-', at most 63 characters.",
        )


def check_api_url(value: str, *, field: str) -> None:
    """Raise ``InvalidRequestError`` naming ``field`` unless ``value`` is an http or https URL with a host."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidRequestError(
            field,
            f"{value!r} is not an http or https URL",
            "Use the address of the API server or of `kubectl proxy`, such as 'http://127.0.0.1:8001'.",
        )


def check_label_value(value: object, *, field: str) -> None:
    """Raise ``InvalidRequestError`` naming ``field`` unless ``value`` is a valid label value.

    Use it for values a person typed, such as a team name, so that they correct the value
    instead of finding it rewritten. Values from Dagster, such as run ids, go through :func:`label_value`.
    """
    if not isinstance(value, str):
        raise InvalidRequestError(field, f"must be a string, got {value!r}", "Use a name such as 'ranking'.")
    if is_label_value(value):
        return
    excerpt = value if len(value) <= 40 else value[:37] + "..."
    problem = f"{excerpt!r} is not a valid Kubernetes label value"
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        problem = f"{excerpt!r} is {len(value)} characters long, above the maximum of {MAX_LABEL_VALUE_LENGTH}"
    raise InvalidRequestError(
        field,
        problem,
        f"Use at most {MAX_LABEL_VALUE_LENGTH} letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit, such as 'ranking'.",
    )


def cluster_name(*, run_id: str, prefix: str = "ray") -> str:
    """Derive the RayCluster name of a run: ``<prefix>-<run id, cleaned and cut>-<hash of the full run id>``.

    The result is a DNS-1035 label of at most ``MAX_CLUSTER_NAME_LENGTH`` characters and
    the same for the same arguments. The hash covers the whole run id, so two runs whose
    ids differ only in characters that were dropped or cut off still get different names.

    Raises:
        ValueError: ``prefix`` is not a DNS-1035 label, or too long to leave room for the hash.
    """
    if not is_dns1035_label(prefix):
        raise ValueError(
            f"cluster name prefix {prefix!r} is invalid; use lowercase letters, digits and '-', a letter first."
        )
    room = MAX_CLUSTER_NAME_LENGTH - len(prefix) - HASH_LENGTH - 2
    if room < 0:
        raise ValueError(
            f"cluster name prefix {prefix!r} is too long; "
            f"use at most {MAX_CLUSTER_NAME_LENGTH - HASH_LENGTH - 2} characters."
        )

    cleaned = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    middle = cleaned[:room].strip("-")
    parts = [prefix, middle, short_hash(run_id)] if middle else [prefix, short_hash(run_id)]
    return "-".join(parts)


def label_value(value: str) -> str:
    """Turn any string into a valid label value, the same output for the same input.

    A valid value comes back unchanged. Any other value keeps a readable beginning, with
    characters outside ``[A-Za-z0-9-_.]`` turned into '-', and ends with
    ``-<hash of the original>``, so two distinct values never share a label value unless
    their hashes collide.
    """
    if is_label_value(value):
        return value

    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)
    head = cleaned[: MAX_LABEL_VALUE_LENGTH - HASH_LENGTH - 1]
    head = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", head)
    digest = short_hash(value)
    return f"{head}-{digest}" if head else digest
