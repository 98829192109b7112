"""The ``local`` backend: one Ray head and N Ray worker nodes as processes on this machine.

Each node is a ``ray start --block`` process in its own process group, so stopping
a node is one ``killpg`` and never touches Ray processes that this cluster did not
start (``ray stop`` would stop every Ray process on the machine). A watchdog
(``resources.reaper``) kills the groups if the launching process dies without
stopping them.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from resources.errors import ClusterStartError, InvalidRequestError
from resources.reaper import GRACE_PERIOD_S, jobs_line, kill_process_groups, remove_folder
from resources.spec import LOCAL_HEAD_MEMORY_BYTES, ClusterSpec

logger = logging.getLogger(__name__)

# One deadline covers the head, the dashboard and every worker joining.
START_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.1
# Times a worker node is started before the cluster start fails. The head is started once.
NODE_START_ATTEMPTS = 2
LOG_TAIL_LINES = 20
# Number of handed-out ports that _free_port remembers. A cluster of 2 workers takes 21.
RECENT_PORTS = 4096

# Ray resolves 127.0.0.1 and "localhost" to the machine's network address before it
# binds (ray._private.services.resolve_ip_for_localhost), so the nodes use another
# loopback address to keep all cluster traffic on this machine.
DEFAULT_NODE_IP = "127.0.0.2"
DASHBOARD_HOST = "127.0.0.1"


@dataclass(frozen=True)
class LocalClusterInfo:
    """Addresses of a running local cluster."""

    name: str
    dashboard_url: str
    gcs_address: str
    startup_s: float


@dataclass
class _Node:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Start number of this node, from 1.
    attempt: int = 1


def _numbered(name: str, attempt: int) -> str:
    """Return the file or folder name of a node's ``attempt``-th start: ``name`` for the first."""
    return name if attempt == 1 else f"{name}-{attempt}"


# Ports that _free_port handed out lately, which it does not hand out again.
_recent_ports: deque[int] = deque(maxlen=RECENT_PORTS)
_recent_ports_lock = threading.Lock()


def _free_port() -> int:
    """Return a port that no socket of this machine uses, and that this process has not handed out lately.

    The kernel may give a port that one probe just released to the next probe. Two
    nodes then got the same port: once a runtime env agent's port was a metrics
    exporter's, and jobs on that node failed with HTTP 405.
    """
    # Limitation: another program can take the port between this probe and Ray's bind.
    probes: list[socket.socket] = []
    try:
        with _recent_ports_lock:
            while True:
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                # The wildcard address, so that a port in use on any address is skipped.
                probe.bind(("", 0))
                port = int(probe.getsockname()[1])
                if port not in _recent_ports:
                    _recent_ports.append(port)
                    return port
    finally:
        # A rejected probe stays bound until here, so the next probe gets another port.
        for probe in probes:
            probe.close()


def visible_gpus(environ: Mapping[str, str], *, needed: int) -> list[str]:
    """List the entries of ``CUDA_VISIBLE_DEVICES``, or ``0`` to ``needed - 1`` when it is unset.

    An empty ``CUDA_VISIBLE_DEVICES`` hides every GPU, as it does for CUDA.
    """
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(device) for device in range(needed)]
    return [device.strip() for device in listed.split(",") if device.strip()]


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalRayCluster:
    """A Ray cluster made of processes on this machine, owned by the object that started it.

    Use it as a context manager, or call :meth:`start` and then :meth:`stop` in ``finally``.
    Setting ``cancel`` makes a start in progress stop what it started and raise
    ``ClusterStartError``; unlike an exception raised from a signal handler, it never
    interrupts the start between launching a node and recording it.
    """

    def __init__(
        self,
        *,
        name: str,
        spec: ClusterSpec,
        node_ip: str = DEFAULT_NODE_IP,
        temp_root: str | None = None,
        python_executable: str = sys.executable,
        start_timeout_s: float = START_TIMEOUT_S,
        node_start_attempts: int = NODE_START_ATTEMPTS,
        on_progress: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._cancel = cancel
        self.spec = spec
        self._node_ip = node_ip
        self._temp_root = temp_root
        self._bin_dir = Path(python_executable).parent
        self._python = python_executable
        self._start_timeout_s = start_timeout_s
        self._node_start_attempts = node_start_attempts
        self._on_progress = on_progress or (lambda message: logger.info("%s", message))
        self._clock = clock
        self._sleep = sleep

        self._nodes: list[_Node] = []
        self._reaper: subprocess.Popen[bytes] | None = None
        self._work_dir: Path | None = None
        self._gcs_address: str | None = None
        self.info: LocalClusterInfo | None = None

    def __enter__(self) -> LocalClusterInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """PIDs of the ``ray start`` process of each node; each is also its node's process group id."""
        return [node.process.pid for node in self._nodes]

    def exited_nodes(self) -> list[str]:
        """Names of the nodes whose ``ray start`` process has exited."""
        return [node.name for node in self._nodes if node.process.poll() is not None]

    def start(self) -> LocalClusterInfo:
        """Start the head and all workers and wait until every node is registered.

        A worker node that exits before the cluster is ready is started again, up to
        ``node_start_attempts`` starts in all.

        Raises:
            InvalidRequestError: ``CUDA_VISIBLE_DEVICES`` lists fewer GPUs than the workers
                need; nothing was started.
            ClusterStartError: the head exited, a worker node exited on its last start,
                or the cluster was not ready within the start timeout. Everything
                started so far is stopped before it is raised.
        """
        self._check_gpus_visible()
        started_at = self._clock()
        deadline = started_at + self._start_timeout_s
        try:
            self._work_dir = Path(tempfile.mkdtemp(prefix="ray-", dir=self._temp_root))
            (self._work_dir / "home").mkdir()
            self._start_reaper()

            gcs_port = _free_port()
            dashboard_port = _free_port()
            gcs_address = f"{self._node_ip}:{gcs_port}"
            dashboard_url = f"http://{DASHBOARD_HOST}:{dashboard_port}"
            self._gcs_address = gcs_address

            self._on_progress(f"Starting Ray head of {self.name}")
            self._start_node("head", self._head_args(gcs_port, dashboard_port), env=self._ray_env())

            # A worker that starts before the GCS listens times out while registering,
            # so workers start once the GCS port accepts connections, all at once, while
            # the head's dashboard is still starting.
            self._wait_for_port(self._node_ip, gcs_port, deadline)
            self._on_progress(f"Starting {self.spec.workers} Ray worker node{'s' if self.spec.workers != 1 else ''}")
            for index in range(self.spec.workers):
                self._start_node(
                    f"worker-{index}", self._worker_args(index, gcs_address, attempt=1), env=self._worker_env(index)
                )

            self._wait_for_dashboard(dashboard_url, deadline)
            self._on_progress(f"Ray head is up, dashboard at {dashboard_url}")
            self._wait_for_nodes(dashboard_url, deadline)
        except BaseException:
            self.stop()
            raise

        startup_s = self._clock() - started_at
        self.info = LocalClusterInfo(
            name=self.name, dashboard_url=dashboard_url, gcs_address=gcs_address, startup_s=startup_s
        )
        self._on_progress(f"All {self.spec.workers} workers registered in {startup_s:.1f} s")
        return self.info

    def stop(self) -> None:
        """Stop every process of this cluster and remove its temporary folder. Safe to call twice."""
        if self._nodes:
            logger.info("Stopping Ray cluster %s (process groups %s)", self.name, self.pids)
            kill_process_groups(self.pids, grace_period_s=GRACE_PERIOD_S)
            for node in self._nodes:
                try:
                    node.process.wait(timeout=GRACE_PERIOD_S)
                except subprocess.TimeoutExpired:
                    logger.warning("Ray %s of %s (pid %d) outlived SIGKILL", node.name, self.name, node.process.pid)
            self._nodes = []
        if self._reaper is not None:
            self._release_reaper()
        if self._work_dir is not None:
            remove_folder(self._work_dir)
            self._work_dir = None
        self.info = None

    def _ray_env(self) -> dict[str, str]:
        assert self._work_dir is not None
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
        # No node of this cluster can be preempted, and Ray Train's preemption watcher is one
        # more process to start before training: about 1.5 s of a run on 2 CPUs.
        env.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        env.update(
            {
                # Jobs run the first `python` on the PATH of the process that started the head.
                "PATH": f"{self._bin_dir}{os.pathsep}{env.get('PATH', '')}",
                # Ray turns on token auth when it finds ~/.ray/auth_token, so this cluster
                # gets its own HOME and sets the auth mode explicitly.
                "HOME": str(self._work_dir / "home"),
                "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        # Ray's State API, which Ray Train's placement group cleaner calls inside the cluster,
        # finds its cluster through RAY_ADDRESS. Without it, the API looked for running clusters
        # and failed with "Found multiple active Ray instances" when this machine ran two.
        assert self._gcs_address is not None
        env["RAY_ADDRESS"] = self._gcs_address
        return env

    def _check_gpus_visible(self) -> None:
        needed = self.spec.workers * self.spec.gpus_per_worker
        if needed == 0:
            return
        visible = visible_gpus(os.environ, needed=needed)
        if len(visible) < needed:
            raise InvalidRequestError(
                "gpus_per_worker",
                f"{self.spec.workers} workers x {self.spec.gpus_per_worker} GPUs need {needed} GPUs "
                f"but CUDA_VISIBLE_DEVICES lists {len(visible)} ({os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
                "List more devices in CUDA_VISIBLE_DEVICES, or ask for fewer GPUs.",
            )

    def _worker_env(self, index: int) -> dict[str, str]:
        """Return the environment of worker node ``index``, with ``CUDA_VISIBLE_DEVICES`` set to that worker's GPUs.

        Without it, every node numbers its GPUs from 0 (``--num-gpus`` turns detection off),
        so each worker would be given GPU 0. Ray uses only the devices that
        ``CUDA_VISIBLE_DEVICES`` lists when its node starts.
        NOTE: tested without a GPU only, on the environment it returns.
        """
        env = self._ray_env()
        per_worker = self.spec.gpus_per_worker
        if per_worker > 0:
            devices = visible_gpus(env, needed=self.spec.workers * per_worker)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[index * per_worker : (index + 1) * per_worker])
        return env

    def _common_args(self) -> list[str]:
        return [
            str(self._bin_dir / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--node-ip-address={self._node_ip}",
            f"--object-store-memory={self.spec.object_store_memory}",
            # Each node on this machine needs its own agent ports; Ray's defaults are fixed numbers.
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--node-manager-port={_free_port()}",
            f"--object-manager-port={_free_port()}",
        ]

    def _head_args(self, gcs_port: int, dashboard_port: int) -> list[str]:
        assert self._work_dir is not None
        return [
            *self._common_args(),
            "--head",
            f"--port={gcs_port}",
            f"--temp-dir={self._work_dir / 'head'}",
            "--include-dashboard=true",
            f"--dashboard-host={DASHBOARD_HOST}",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={_free_port()}",
            f"--num-cpus={self.spec.head_cpus}",
            "--num-gpus=0",
            # Without --memory the head advertises the machine's memory, so the cluster's total
            # exceeds the machine's, and a task that requests memory can be placed on the head.
            f"--memory={LOCAL_HEAD_MEMORY_BYTES}",
        ]

    def _worker_args(self, index: int, gcs_address: str, *, attempt: int) -> list[str]:
        assert self._work_dir is not None
        return [
            *self._common_args(),
            f"--address={gcs_address}",
            # Nodes that share a temp dir pick socket and log names by counting files.
            # That races when workers start together, so each node, and each new start
            # of a node, gets its own folder.
            f"--temp-dir={self._work_dir / _numbered(f'w{index}', attempt)}",
            f"--num-cpus={self.spec.cpus_per_worker}",
            f"--num-gpus={self.spec.gpus_per_worker}",
            f"--memory={self.spec.memory_per_worker}",
        ]

    def _start_reaper(self) -> None:
        assert self._work_dir is not None
        self._reaper = subprocess.Popen(
            [self._python, "-m", "resources.reaper", f"--cleanup-dir={self._work_dir}"],
            stdin=subprocess.PIPE,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )

    def watch_jobs(self, *, registry: Path, history_url: str | None, holder: str) -> None:
        """Have the watchdog mark the cluster's unfinished jobs LOST if this process dies without stopping it.

        See :func:`resources.reaper.jobs_line` for the arguments. A watchdog that has exited
        costs only a warning: the cluster runs on, and its jobs' end is recorded by a normal stop.
        """
        if self._reaper is None or self._reaper.stdin is None:
            return
        try:
            line = jobs_line(cluster=self.name, registry=registry, history_url=history_url, holder=holder)
            self._reaper.stdin.write(f"{line}\n".encode())
            self._reaper.stdin.flush()
        except OSError as err:
            logger.warning("The watchdog of %s will not record its jobs' end: %s", self.name, err)

    def _release_reaper(self) -> None:
        assert self._reaper is not None
        try:
            assert self._reaper.stdin is not None
            self._reaper.stdin.write(b"release\n")
            self._reaper.stdin.close()
            self._reaper.wait(timeout=GRACE_PERIOD_S)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self._reaper.kill()
        self._reaper = None

    def _start_node(self, node_name: str, args: list[str], *, env: dict[str, str], attempt: int = 1) -> None:
        assert self._work_dir is not None
        assert self._reaper is not None
        assert self._reaper.stdin is not None
        log_path = self._work_dir / f"{_numbered(node_name, attempt)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._nodes.append(_Node(name=node_name, process=process, log_path=log_path, attempt=attempt))
        self._reaper.stdin.write(f"watch {process.pid}\n".encode())
        self._reaper.stdin.flush()
        logger.debug("Started Ray %s of %s as pid %d", node_name, self.name, process.pid)

    def _check_nodes_alive(self) -> None:
        """Raise if a node exited while the cluster starts, after starting a worker node again if it may.

        On a loaded machine a worker's raylet can miss its own start-up deadline ("The
        current node timed out during startup"), and a second start may succeed. The
        head is not started again, because the workers registered with its GCS.
        """
        if self._cancel is not None and self._cancel.is_set():
            raise ClusterStartError(self.name, "the start was cancelled")
        for position, node in enumerate(self._nodes):
            code = node.process.poll()
            if code is None:
                continue
            if node.name == "head" or node.attempt >= self._node_start_attempts:
                raise ClusterStartError(
                    self.name,
                    f"Ray {node.name} exited with code {code} while starting"
                    + (f" (start {node.attempt} of {self._node_start_attempts})" if node.attempt > 1 else ""),
                    _tail(node.log_path),
                )
            logger.warning(
                "Ray %s of %s exited with code %d while starting:\n%s", node.name, self.name, code, _tail(node.log_path)
            )
            self._on_progress(f"Ray {node.name} exited with code {code} while starting; starting it again")
            # Stop what the failed start left running (a raylet, its agents) before the new start.
            kill_process_groups([node.process.pid], grace_period_s=GRACE_PERIOD_S)
            del self._nodes[position]
            index = int(node.name.removeprefix("worker-"))
            assert self._gcs_address is not None
            self._start_node(
                node.name,
                self._worker_args(index, self._gcs_address, attempt=node.attempt + 1),
                env=self._worker_env(index),
                attempt=node.attempt + 1,
            )
            return

    def _wait_for_port(self, host: str, port: int, deadline: float) -> None:
        while True:
            self._check_nodes_alive()
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError:
                pass
            if self._clock() > deadline:
                raise ClusterStartError(
                    self.name,
                    f"the GCS at {host}:{port} did not accept connections within {self._start_timeout_s:.0f} s",
                    _tail(self._nodes[0].log_path),
                )
            self._sleep(POLL_INTERVAL_S)

    def _wait_for_dashboard(self, dashboard_url: str, deadline: float) -> None:
        while True:
            self._check_nodes_alive()
            try:
                with urllib.request.urlopen(f"{dashboard_url}/api/version", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self._clock() > deadline:
                raise ClusterStartError(
                    self.name,
                    f"the dashboard at {dashboard_url} did not answer within {self._start_timeout_s:.0f} s",
                    _tail(self._nodes[0].log_path),
                )
            self._sleep(POLL_INTERVAL_S)

    def _wait_for_nodes(self, dashboard_url: str, deadline: float) -> None:
        from ray.util.state import list_nodes

        expected = 1 + self.spec.workers
        reported = -1
        while True:
            self._check_nodes_alive()
            try:
                alive = len(list_nodes(address=dashboard_url, filters=[("state", "=", "ALIVE")], timeout=5))
            except Exception as err:  # noqa: BLE001 - the state API raises several types while starting
                logger.debug("Node listing of %s failed: %s", self.name, err)
                alive = 0
            if alive != reported:
                self._on_progress(f"{max(alive - 1, 0)} of {self.spec.workers} workers registered")
                reported = alive
            if alive >= expected:
                return
            if self._clock() > deadline:
                raise ClusterStartError(
                    self.name,
                    f"{max(alive - 1, 0)} of {self.spec.workers} workers registered within "
                    f"{self._start_timeout_s:.0f} s",
                    _tail(self._nodes[-1].log_path),
                )
            self._sleep(POLL_INTERVAL_S)
