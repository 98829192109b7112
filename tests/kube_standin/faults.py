"""Injected failures: error responses, delays and dropped connections for requests that match a filter."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.kube_standin.routing import Route


@dataclass
class Fault:
    """A failure for the next `times` requests that match every filter that is set.

    With `status`, the server responds with that status and a `Status` body (and `Retry-After` when
    `retry_after_s` is set). With `drop_connection`, it resets the connection without a response.
    With neither, the request is served normally after `delay_s`.

    Two faults act after the request is served, so its change is applied although the client may
    never learn of it. With `drop_after_serving`, the server resets the connection in place of the
    response. With `response_delay_s`, it delays the response by that long, which is a slow response
    once the delay passes the client's timeout.

    `before_serving`, when set, is called as the fault is taken, before the fault acts or the request
    is served. A test uses it for a change that another client makes at that moment, such as
    deleting the object the request names.
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
    drop_after_serving: bool = False
    response_delay_s: float = 0.0
    before_serving: Callable[[], object] | None = None
    times: int = 1
    # Requests this fault has been applied to.
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ValueError(f"Fault.times must be at least 1, got {self.times}")
        if self.status is not None and self.drop_connection:
            raise ValueError("a Fault either responds with `status` or drops the connection, not both")
        if self.response_delay_s < 0:
            raise ValueError(f"Fault.response_delay_s must not be negative, got {self.response_delay_s}")
        if (self.drop_after_serving or self.response_delay_s > 0) and (self.status is not None or self.drop_connection):
            raise ValueError(
                "`drop_after_serving` and `response_delay_s` act on a served request, so they cannot go with "
                "`status` or `drop_connection`, which replace serving it"
            )
        if self.drop_after_serving and self.response_delay_s > 0:
            raise ValueError("a Fault either drops the served response or delays it, not both")

    @property
    def acts_after_serving(self) -> bool:
        """Tell whether the fault changes how the response of a served request is sent."""
        return self.drop_after_serving or self.response_delay_s > 0

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
