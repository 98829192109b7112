"""The port-forward copies bytes between a local port and the pod connection, both ways."""

import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from resources.kuberay.port_forward import PortForward


class _Dashboard(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ray_version": "2.60.0"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_forward_serves_http_through_connector(dashboard: int) -> None:
    connections = []

    def connect() -> socket.socket:
        remote = socket.create_connection(("127.0.0.1", dashboard))
        connections.append(remote)
        return remote

    with PortForward(connect, description="pod ml-training/head:8265") as forward:
        for _ in range(2):
            with urllib.request.urlopen(f"{forward.local_url}/api/version", timeout=5) as response:
                assert response.read() == b'{"ray_version": "2.60.0"}'

    assert len(connections) == 2


def test_failed_connect_keeps_forward_alive(dashboard: int) -> None:
    attempts = []

    def connect() -> socket.socket:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionRefusedError("pod not ready")
        return socket.create_connection(("127.0.0.1", dashboard))

    with PortForward(connect, description="pod ml-training/head:8265") as forward:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{forward.local_url}/api/version", timeout=5)
        with urllib.request.urlopen(f"{forward.local_url}/api/version", timeout=5) as response:
            assert response.status == 200
