"""A local port forwarded to a pod's port through the Kubernetes API, as ``kubectl port-forward`` does.

For development from a laptop, where the head service's cluster DNS name does not
resolve: the platform submits jobs to ``http://127.0.0.1:<local port>``.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections.abc import Callable

from kubernetes import client
from kubernetes.stream import portforward

logger = logging.getLogger(__name__)

BUFFER_BYTES = 65536

# Opens one connection to the pod's port and returns a socket for it.
PodConnector = Callable[[], socket.socket]


def kubernetes_connector(core_api: client.CoreV1Api, *, namespace: str, pod: str, port: int) -> PodConnector:
    """Connect through the pod's portforward subresource, which needs ``create`` on ``pods/portforward``."""

    def connect() -> socket.socket:
        forward = portforward(core_api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        return forward.socket(port)  # type: ignore[no-any-return]

    return connect


def _pipe(local: socket.socket, remote: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    selector = selectors.DefaultSelector()
    selector.register(local, selectors.EVENT_READ, remote)
    selector.register(remote, selectors.EVENT_READ, local)
    try:
        while True:
            for key, _ in selector.select():
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                data = source.recv(BUFFER_BYTES)
                if not data:
                    return
                key.data.sendall(data)
    except OSError as error:
        logger.debug("Port-forward connection closed: %s", error)
    finally:
        selector.close()
        local.close()
        remote.close()


class PortForward:
    """Listen on 127.0.0.1 and forward each connection through ``connect``; use it as a context manager."""

    def __init__(self, connect: PodConnector, *, description: str) -> None:
        self._connect = connect
        self._description = description
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def local_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the listening socket."""
        assert self._listener is not None, "the port-forward is not started"
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> PortForward:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="port-forward", daemon=True)
        self._thread.start()
        logger.info("Forwarding %s to %s", self.local_url, self._description)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> PortForward:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                local, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            local.settimeout(None)
            try:
                remote = self._connect()
            except Exception as error:  # noqa: BLE001 - one failed connection must not stop the forward
                logger.warning("Port-forward to %s failed: %s", self._description, error)
                local.close()
                continue
            threading.Thread(target=_pipe, args=(local, remote), daemon=True).start()
