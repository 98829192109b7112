"""Injected failures: error responses, delays and dropped connections for requests that match a filter."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tests.kube_standin.routing import Route


@dataclass
class Fault:
    """A failure for the next `times` requests that match every filter that is set.

    With `status`, the server responds with that status and a `Status` body (and `Retry-After` when
    `retry_after_s` is set). With `drop_connection`, it resets the connection without a response.
    With neither, the request is served normally after `delay_s`.
    """

    verb: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    status: int | None = None
    reason: str | None = None
    message: str | None = None
    retry_after_s: int | None = None
    delay_s: float = 0.0
    drop_connection: bool = False
    times: int = 1
    # Requests this fault has been applied to.
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ValueError(f"Fault.times must be at least 1, got {self.times}")
        if self.status is not None and self.drop_connection:
            raise ValueError("a Fault either responds with `status` or drops the connection, not both")

    @property
    def exhausted(self) -> bool:
        return self.hits >= self.times

    def matches(self, route: Route) -> bool:
        filters = {
            "verb": (self.verb, route.verb),
            "plural": (self.plural, route.resource.plural),
            "namespace": (self.namespace, route.namespace),
            "name": (self.name, route.name),
            "subresource": (self.subresource, route.subresource),
        }
        return all(expected is None or expected == actual for expected, actual in filters.values())


class FaultQueue:
    """Faults in the order they were added; a request takes the first unexhausted one that matches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, route: Route) -> Fault | None:
        """Return the fault to apply to this request and count the hit, or None to serve it normally."""
        with self._lock:
            for fault in self._faults:
                if not fault.exhausted and fault.matches(route):
                    fault.hits += 1
                    return fault
            return None

    def pending(self) -> list[Fault]:
        """Return the faults that still have requests to fail."""
        with self._lock:
            return [fault for fault in self._faults if not fault.exhausted]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
