"""A Kubernetes API stand-in served over HTTP on 127.0.0.1 for the official `kubernetes` client.

Typical use in a test:

    with KubeStandin(validators={("ray.io", "rayclusters"): validate}) as kube:
        api = kubernetes.client.CustomObjectsApi(kube.api_client())
        api.create_namespaced_custom_object("ray.io", "v1", "default", "rayclusters", body)
        assert kube.calls(verb="create", plural="rayclusters")
"""

from __future__ import annotations

import base64
import binascii
import datetime
import io
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client

from tests.kube_standin import errors
from tests.kube_standin.faults import Fault, FaultQueue
from tests.kube_standin.resources import DEFAULT_RESOURCE_TYPES, ResourceType
from tests.kube_standin.routing import Route, parse_route, query_bool, query_int, query_value
from tests.kube_standin.selectors import SelectorError, parse_field_selector, parse_label_selector
from tests.kube_standin.store import DEFAULT_HISTORY_LIMIT, ObjectStore, Validator, WatchEvent

logger = logging.getLogger(__name__)

# How often an idle watch checks whether its client went away or the server is stopping.
WATCH_POLL_INTERVAL_S = 0.05
SERVER_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it, with the status of its response."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    # The parsed JSON body, or None for a request without one.
    body: Any
    # The HTTP status sent; None when an injected fault dropped the connection.
    status: int | None
    # The fields below are None for a path that names no served resource.
    verb: str | None
    group: str | None
    version: str | None
    plural: str | None
    kind: str | None
    namespace: str | None
    name: str | None
    subresource: str | None


class _HttpServer(ThreadingHTTPServer):
    """A threading server that tracks its connections, so stopping can end idle keep-alive connections."""

    # Non-daemon handler threads are joined by server_close(), so no thread outlives stop().
    daemon_threads = False
    block_on_close = True

    def __init__(self, standin: KubeStandin) -> None:
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                # The handler thread closed it in the meantime.
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes, so without TCP_NODELAY delayed ACKs add about 40 ms per
        # request (measured on loopback).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ----- entry points -----

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    # ----- dispatch -----

    def _handle(self) -> None:
        standin = self.server.standin
        url = urlsplit(self.path)
        self._query = parse_qs(url.query, keep_blank_values=True)
        self._url_path = url.path
        self._content_type = self._media_type(self.headers.get("Content-Type"))
        self._route: Route | None = None
        self._recorded = False
        # A fault that acts on the response once the request has been served.
        self._response_fault: Fault | None = None
        self._body: Any = None
        raw_body = self._read_body()

        try:
            self._body = json.loads(raw_body) if raw_body else None
        except json.JSONDecodeError as err:
            self._body = None
            self._send_error(errors.bad_request(f"the request body is not valid JSON: {err}"))
            return

        try:
            self._route = parse_route(self.command, url.path, self._query, standin.store.resources)
            if query_value(self._query, "dryRun"):
                raise errors.bad_request("the stand-in does not implement dryRun; send the request without it")
            if self._apply_fault(standin):
                return
            self._dispatch(self._route)
        except errors.ApiError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:
            logger.exception("request %s %s failed in the stand-in", self.command, self.path)
            if self._recorded:
                # The response has begun, so a 500 cannot be sent. Closing the connection marks it incomplete.
                self.close_connection = True
                return
            self._send_error(errors.ApiError(code=500, reason="InternalError", message=f"stand-in error: {err!r}"))

    def _apply_fault(self, standin: KubeStandin) -> bool:
        """Apply the first matching injected fault; return True when the fault produced the response."""
        assert self._route is not None
        fault = standin.faults.take(self._route)
        if fault is None:
            return False
        logger.info("applying injected fault %r to %s %s", fault, self.command, self.path)
        if fault.before_serving is not None:
            fault.before_serving()
        if fault.delay_s > 0 and standin._stopping.wait(fault.delay_s):
            self._drop_connection()
            return True
        if fault.drop_connection:
            self._drop_connection()
            return True
        if fault.acts_after_serving:
            self._response_fault = fault
            return False
        if fault.status is None:
            return False
        headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else {}
        error = errors.status_error(fault.status, message=fault.message, reason=fault.reason)
        error.headers.update(headers)
        self._send_error(error)
        return True

    def _dispatch(self, route: Route) -> None:
        store = self.server.standin.store
        resource = route.resource
        namespace = route.namespace or ""
        name = route.name or ""

        if route.verb == "get" and route.subresource == "log":
            self._send_log(namespace, name)
        elif route.verb == "get":
            self._send_json(200, store.get(resource, namespace, name))
        elif route.verb == "list":
            self._send_list(route)
        elif route.verb == "watch":
            self._stream_watch(route)
        elif route.verb == "create":
            self._send_json(201, store.create(resource, namespace, self._body or {}))
        elif route.verb == "update":
            updated = store.replace(resource, namespace, name, self._body or {}, subresource=route.subresource)
            self._send_json(200, updated)
        elif route.verb == "patch":
            patched = store.patch(
                resource,
                namespace,
                name,
                self._body,
                content_type=self._content_type or "",
                subresource=route.subresource,
            )
            self._send_json(200, patched)
        elif route.verb == "delete":
            preconditions = (self._body or {}).get("preconditions") if isinstance(self._body, dict) else None
            self._send_json(200, store.delete(resource, namespace, name, preconditions=preconditions))
        elif route.verb == "deletecollection":
            items = self._select(route)
            deleted = [store.delete(resource, namespace, item["metadata"]["name"]) for item in items]
            self._send_json(200, self._list_body(resource, deleted, store.resource_version))

    # ----- list and watch -----

    def _selectors(self, resource: ResourceType) -> tuple[Any, Any]:
        try:
            label_selector = parse_label_selector(query_value(self._query, "labelSelector"))
            field_selector = parse_field_selector(query_value(self._query, "fieldSelector"), resource.selectable_fields)
        except SelectorError as err:
            raise errors.bad_request(str(err)) from err
        return label_selector, field_selector

    def _select(self, route: Route) -> list[dict[str, Any]]:
        label_selector, field_selector = self._selectors(route.resource)
        items, _ = self.server.standin.store.list(
            route.resource, route.namespace, label_selector=label_selector, field_selector=field_selector
        )
        return items

    def _list_body(self, resource: ResourceType, items: list[dict[str, Any]], version: int) -> dict[str, Any]:
        if not resource.custom:
            # Built-in list types omit apiVersion and kind on their items; custom resource lists keep them.
            items = [{key: value for key, value in item.items() if key not in ("apiVersion", "kind")} for item in items]
        return {
            "apiVersion": resource.api_version,
            "kind": f"{resource.kind}List",
            "metadata": {"resourceVersion": str(version)},
            "items": items,
        }

    def _send_list(self, route: Route) -> None:
        label_selector, field_selector = self._selectors(route.resource)
        items, version = self.server.standin.store.list(
            route.resource, route.namespace, label_selector=label_selector, field_selector=field_selector
        )

        # NOTE: a continue token resumes after the last returned key in the current state, not in a
        # snapshot at the first page's resourceVersion as etcd does, so changes between pages show up.
        start_after = self._decode_continue(query_value(self._query, "continue"))
        if start_after is not None:
            items = [item for item in items if _item_key(item) > start_after]
        limit = query_int(self._query, "limit")
        remaining: list[dict[str, Any]] = []
        if limit is not None and limit > 0 and len(items) > limit:
            items, remaining = items[:limit], items[limit:]

        body = self._list_body(route.resource, items, version)
        if remaining:
            token = json.dumps({"start": list(_item_key(items[-1]))}).encode()
            body["metadata"]["continue"] = base64.urlsafe_b64encode(token).decode()
            body["metadata"]["remainingItemCount"] = len(remaining)
        self._send_json(200, body)

    def _decode_continue(self, token: str | None) -> tuple[str, str] | None:
        if not token:
            return None
        try:
            namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
        except (binascii.Error, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise errors.bad_request(f"invalid continue token {token!r}: {err}") from err
        return str(namespace), str(name)

    def _stream_watch(self, route: Route) -> None:
        standin = self.server.standin
        label_selector, field_selector = self._selectors(route.resource)
        timeout_s = query_int(self._query, "timeoutSeconds")
        bookmarks = query_bool(self._query, "allowWatchBookmarks")
        deadline = None if not timeout_s else time.monotonic() + timeout_s * standin.watch_timeout_scale

        self._begin_response(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        try:
            watcher = standin.store.watch(
                route.resource,
                route.namespace,
                resource_version=query_value(self._query, "resourceVersion"),
                label_selector=label_selector,
                field_selector=field_selector,
            )
        except errors.ApiError as err:
            # The real server reports a watch error, 410 Gone among them, as an ERROR event on a 200 stream.
            self._write_chunk({"type": "ERROR", "object": err.to_status()})
            self._end_chunks()
            return

        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                wait_s = WATCH_POLL_INTERVAL_S if remaining is None else min(remaining, WATCH_POLL_INTERVAL_S)
                try:
                    event = watcher.next_event(wait_s)
                except errors.ApiError as err:
                    self._write_chunk({"type": "ERROR", "object": err.to_status()})
                    break
                if event is not None:
                    self._write_chunk(self._watch_event(event))
                elif watcher.closed or self._client_disconnected():
                    break
            if bookmarks and not self.close_connection:
                self._write_chunk(self._bookmark(route.resource, watcher.resource_version))
            self._end_chunks()
        finally:
            watcher.close()

    @staticmethod
    def _watch_event(event: WatchEvent) -> dict[str, Any]:
        return {"type": event.type, "object": event.object}

    @staticmethod
    def _bookmark(resource: ResourceType, version: int) -> dict[str, Any]:
        return {
            "type": "BOOKMARK",
            "object": {
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": {"resourceVersion": str(version)},
            },
        }

    def _client_disconnected(self) -> bool:
        """Return True when the client closed its end; an idle watch would notice only on its next write."""
        try:
            self.connection.setblocking(False)
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            finally:
                self.connection.setblocking(True)
        except BlockingIOError:
            return False
        except OSError:
            return True

    # ----- pod logs -----

    def _send_log(self, namespace: str, name: str) -> None:
        text = self.server.standin.store.pod_log(namespace, name, container=query_value(self._query, "container"))
        tail_lines = query_int(self._query, "tailLines")
        if tail_lines is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail_lines:]) if tail_lines > 0 else ""
        data = text.encode()
        limit_bytes = query_int(self._query, "limitBytes")
        if limit_bytes is not None:
            data = data[:limit_bytes]
        # NOTE: with `follow=true` the response still ends after the current text; logs do not stream.
        self._begin_response(200, {"Content-Type": "text/plain", "Content-Length": str(len(data))})
        self.wfile.write(data)

    # ----- responses -----

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _media_type(header: str | None) -> str | None:
        return header.split(";")[0].strip().lower() if header else None

    def _record(self, status: int | None) -> None:
        if self._recorded:
            return
        self._recorded = True
        route = self._route
        resource = route.resource if route else None
        self.server.standin._record(
            RecordedRequest(
                method=self.command,
                path=self._url_path,
                query={key: list(values) for key, values in self._query.items()},
                content_type=self._content_type,
                body=self._body,
                status=None if status is None else int(status),
                verb=route.verb if route else None,
                group=resource.group if resource else None,
                version=resource.version if resource else None,
                plural=resource.plural if resource else None,
                kind=resource.kind if resource else None,
                namespace=route.namespace if route else None,
                name=route.name if route else None,
                subresource=route.subresource if route else None,
            )
        )

    def _begin_response(self, status: int, headers: Mapping[str, str]) -> None:
        fault = self._response_fault
        if fault is not None and fault.drop_after_serving:
            # The request was served and its change applied, but the client gets a reset instead of the response.
            self._drop_connection()
            self._discard_response()
            return
        self._record(status)
        if fault is not None and fault.response_delay_s > 0:
            # Recorded before the delay, so the request log keeps the order in which requests were served.
            if self.server.standin._stopping.wait(fault.response_delay_s):
                self._drop_connection()
                self._discard_response()
                return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._begin_response(
            status, {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        )
        self.wfile.write(data)

    def _send_error(self, error: errors.ApiError) -> None:
        logger.debug("answering %s %s with %d %s: %s", self.command, self.path, error.code, error.reason, error.message)
        self._send_json(error.code, error.to_status(), error.headers)

    def _write_chunk(self, event: Mapping[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop_connection(self) -> None:
        """Reset the connection without a response: SO_LINGER 0 makes close() send RST instead of FIN."""
        self._record(None)
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _discard_response(self) -> None:
        """Send the rest of this response nowhere, because its connection is closed."""
        self.wfile = io.BytesIO()


def _item_key(item: Mapping[str, Any]) -> tuple[str, str]:
    metadata = item["metadata"]
    return str(metadata["namespace"]), str(metadata["name"])


class KubeStandin:
    """A Kubernetes API stand-in on 127.0.0.1 with an ephemeral port, served from a background thread.

    Use it as a context manager. `store` contains the objects, `requests` records every request,
    and `inject_fault` makes matching requests fail. See the package docstring for what it
    serves and what it leaves out.
    """

    def __init__(
        self,
        *,
        validators: Mapping[tuple[str, str], Validator] | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
        resource_types: Iterable[ResourceType] = DEFAULT_RESOURCE_TYPES,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        watch_timeout_scale: float = 1.0,
    ) -> None:
        """Create a stopped server.

        `validators` maps (group, plural) to a function that returns the reasons an object is
        invalid, or an empty list when it is valid. A non-empty list fails the write with 422.
        `clock` returns the time written to `creationTimestamp` and `deletionTimestamp`.
        `watch_timeout_scale` multiplies `timeoutSeconds` of watches, so that a test can ask
        the client for `timeout_seconds=1` and wait a fraction of a second.
        """
        self.store = ObjectStore(
            clock=clock, validators=validators, resource_types=resource_types, history_limit=history_limit
        )
        self.faults = FaultQueue()
        self.watch_timeout_scale = watch_timeout_scale
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._api_clients: list[kubernetes.client.ApiClient] = []

    # ----- lifecycle -----

    def start(self) -> KubeStandin:
        if self._httpd is not None:
            raise RuntimeError(f"the Kubernetes API stand-in is already serving at {self.url}")
        if self._stopping.is_set():
            raise RuntimeError("a stopped Kubernetes API stand-in cannot be restarted; create a new KubeStandin")
        self._httpd = _HttpServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="kube-standin-server"
        )
        self._thread.start()
        logger.info("Kubernetes API stand-in serving at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving: end open watches and connections, then join every server thread."""
        if self._httpd is None or self._thread is None:
            return
        self._stopping.set()
        self.store.close()
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join(SERVER_STOP_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("the stand-in server thread did not stop within %.0f s", SERVER_STOP_TIMEOUT_S)
        for api_client in self._api_clients:
            api_client.close()
        self._api_clients.clear()
        logger.info("Kubernetes API stand-in at %s stopped after %d requests", self.url, len(self._requests))
        self._httpd = None
        self._thread = None

    def __enter__(self) -> KubeStandin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ----- connection -----

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(
                "the Kubernetes API stand-in is not serving; call start() or use it as a context manager"
            )
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_client(self) -> kubernetes.client.ApiClient:
        """Return an ApiClient configured in code for this server; stop() closes it."""
        configuration = kubernetes.client.Configuration(host=self.url)
        api_client = kubernetes.client.ApiClient(configuration)
        self._api_clients.append(api_client)
        return api_client

    # ----- request log -----

    def _record(self, request: RecordedRequest) -> None:
        with self._requests_lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a copy of every request received so far, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def calls(
        self,
        *,
        verb: str | None = None,
        plural: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        status: int | None = None,
    ) -> list[RecordedRequest]:
        """Return the recorded requests that match every filter that is set."""
        filters = {
            "verb": verb,
            "plural": plural,
            "namespace": namespace,
            "name": name,
            "subresource": subresource,
            "status": status,
        }
        return [
            request
            for request in self.requests
            if all(value is None or getattr(request, field) == value for field, value in filters.items())
        ]

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    # ----- faults -----

    def inject_fault(
        self,
        *,
        verb: str | None = None,
        plural: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        status: int | None = None,
        reason: str | None = None,
        message: str | None = None,
        retry_after_s: int | None = None,
        delay_s: float = 0.0,
        drop_connection: bool = False,
        drop_after_serving: bool = False,
        response_delay_s: float = 0.0,
        before_serving: Callable[[], object] | None = None,
        times: int = 1,
    ) -> Fault:
        """Queue a fault for the next `times` matching requests; see Fault for the fields."""
        return self.faults.add(
            Fault(
                verb=verb,
                plural=plural,
                namespace=namespace,
                name=name,
                subresource=subresource,
                status=status,
                reason=reason,
                message=message,
                retry_after_s=retry_after_s,
                delay_s=delay_s,
                drop_connection=drop_connection,
                drop_after_serving=drop_after_serving,
                response_delay_s=response_delay_s,
                before_serving=before_serving,
                times=times,
            )
        )
