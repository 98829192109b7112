"""Kubernetes resource quantities (``500m``, ``2``, ``4Gi``, ``1e3``) as exact decimals."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The suffixes of k8s.io/apimachinery/pkg/api/resource: binary (Ki..Ei), decimal SI (n..E)
# and a decimal exponent (e3, E-2).
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))((?:[KMGTPE]i)|[numkMGTPE]?|[eE][+-]?\d+)")


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes quantity into its value in base units (cores, bytes, devices).

    Raises:
        ValueError: ``value`` is not a quantity.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    if isinstance(value, int | float):
        return Decimal(str(value))

    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity; use a form such as '500m', '2' or '4Gi'")
    number, suffix = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation as err:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from err

    if suffix in _BINARY:
        return amount * _BINARY[suffix]
    if suffix in _DECIMAL:
        return amount * _DECIMAL[suffix]
    return amount * Decimal(10) ** int(suffix[1:])


def format_cpu(cores: Decimal) -> str:
    """Format CPU cores as Kubernetes does: whole cores as ``2``, others in millicores as ``500m``."""
    if cores == cores.to_integral_value():
        return str(int(cores))
    return f"{int((cores * 1000).to_integral_value())}m"


def format_bytes(size: int) -> str:
    """Format a byte count with the largest binary suffix that divides it, such as ``4Gi``."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        if size % _BINARY[suffix] == 0:
            return f"{size // _BINARY[suffix]}{suffix}"
    return str(size)
