"""The ports that the local backend picks for its Ray nodes."""

import socket
from typing import Any

import pytest

from resources import local


class _ScriptedProbe:
    """A socket whose bind to port 0 gets the next port of a script, as the kernel would choose it."""

    ports: list[int] = []
    closed = 0

    def __init__(self, *args: Any) -> None:
        self._port = 0

    def bind(self, address: tuple[str, int]) -> None:
        self._port = _ScriptedProbe.ports.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("0.0.0.0", self._port)

    def close(self) -> None:
        _ScriptedProbe.closed += 1


def test_free_ports_are_all_different() -> None:
    ports = [local._free_port() for _ in range(300)]

    assert len(set(ports)) == len(ports)


def test_port_given_twice_by_kernel_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_recent_ports", local.deque(maxlen=local.RECENT_PORTS))
    monkeypatch.setattr(local.socket, "socket", _ScriptedProbe)
    _ScriptedProbe.ports = [40001, 40001, 40002]
    _ScriptedProbe.closed = 0

    first = local._free_port()
    second = local._free_port()

    assert first == 40001
    assert second == 40002
    assert _ScriptedProbe.closed == 3


def test_free_port_is_bindable() -> None:
    port = local._free_port()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.2", port))
