"""``trainctl``: Ray clusters for experiments, from the templates, policy and backends the pipelines use.

Settings come from the same environment variables as the Dagster code location
(RAY_BACKEND, KUBE_API_URL, KUBERAY_NAMESPACE, KUBERAY_POLICY_FILE, ...); the flags of
each command override them. Exit codes are listed in ``EXIT_CODES`` and in
docs/trainctl.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psutil
import requests
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from resources.cli.backends import (
    ClusterNotFoundError,
    Clusters,
    KubeRayClusters,
    LocalClusters,
    UpRequest,
    check_cluster_name,
    current_user,
    default_cluster_name,
)
from resources.cluster import RayClusterResource
from resources.dashboard import DashboardError, node_usage
from resources.errors import (
    ClusterStartError,
    InvalidRequestError,
    PlatformError,
    RayJobError,
    failure_reason,
    rename_fields,
)
from resources.history import (
    TERMINAL_STATUSES,
    HistoryError,
    JobHistory,
    JobRecord,
    default_history_url,
    missing_sqlite_file,
    portable_history_url,
    state_dir,
)
from resources.jobs import JOB_POLL_INTERVAL_S, run_job
from resources.kuberay.inventory import ClusterSummary
from resources.kuberay.lifecycle import ClusterConflictError
from resources.kuberay.manifest import manifest_to_yaml
from resources.kuberay.naming import check_label_value
from resources.recorder import HistoryRecorder, open_history, other_histories, settle_jobs, unfinished_jobs
from resources.spec import format_duration, format_size, parse_duration_minutes, parse_memory

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID_REQUEST = 3
EXIT_NOT_FOUND = 4
EXIT_START_FAILED = 5
EXIT_PLATFORM = 6
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE, the status a shell shows for a command that the signal ended.
EXIT_BROKEN_PIPE = 141
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_JOB_FAILED: "the job failed or was stopped (submit, logs --follow)",
    EXIT_USAGE: "wrong usage: unknown command or option, missing argument",
    EXIT_INVALID_REQUEST: "invalid request or policy violation; nothing was created",
    EXIT_NOT_FOUND: "no such cluster or job",
    EXIT_START_FAILED: "the cluster did not become ready; nothing is left running",
    EXIT_PLATFORM: "the Kubernetes API, the Ray dashboard, the job history or the state folder (TRAINCTL_HOME) failed",
    EXIT_INTERRUPTED: "interrupted with Ctrl-C; what was being created is removed",
    EXIT_BROKEN_PIPE: "the reader of the output exited first, as `head` does; nothing is printed",
}

# Request fields and manifest paths, as the options a user typed.
_OPTION_OF_FIELD = {
    "template": "--template",
    "workers": "--workers",
    "min_workers": "--workers",
    "max_workers": "--workers",
    "cpus_per_worker": "--cpus",
    "memory_per_worker": "--memory",
    "gpus_per_worker": "--gpus-per-worker",
    "gpu_type": "--gpu-type",
    "image": "--image",
    "team": "--team",
    "ttl": "--ttl",
    "name": "--name",
    "namespace": "--namespace",
    # trainctl takes the head's memory and the local object store from the environment, never from an option.
    "head_memory": "RAY_HEAD_MEMORY",
    "object_store_memory": "RAY_OBJECT_STORE_MEMORY",
}


def option_for(field: str) -> str:
    """Name the command-line option behind a request field or a manifest path of an ``InvalidRequestError``."""
    if field in _OPTION_OF_FIELD:
        return _OPTION_OF_FIELD[field]
    if not field.startswith("spec."):
        # Not a manifest path: a policy file's key ("<file>: head_memory") or a variable, named as it is.
        return field
    rules = (
        (".image", "--image"),
        ("gpu-type", "--gpu-type"),
        ("nvidia.com/gpu", "--gpus-per-worker"),
        ("Replicas", "--workers"),
        ("headGroupSpec.template.spec.containers[*].resources.limits.memory", "RAY_HEAD_MEMORY"),
        ("memory", "--memory"),
        (".cpu", "--cpus"),
    )
    return next((option for marker, option in rules if marker in field), field)


class CommandError(click.ClickException):
    """An error shown as ``Error: <message>`` with its own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


F = TypeVar("F", bound=Callable[..., Any])


# Commands that create a cluster or a job. Their invalid requests end with "Nothing was created."
_CREATING_COMMANDS = frozenset({"up", "render", "submit"})


def command_error(err: Exception, *, creates: bool = False) -> CommandError | None:
    """Return the message and documented exit code for one of the platform's errors; ``None`` for any other.

    With ``creates``, the message of an invalid request ends with "Nothing was created."
    """
    if isinstance(err, CommandError):
        return err
    if isinstance(err, InvalidRequestError):
        problem = rename_fields(err.problem, _OPTION_OF_FIELD)
        fix = rename_fields(err.fix, _OPTION_OF_FIELD)
        created = " Nothing was created." if creates else ""
        return CommandError(f"{option_for(err.field)}: {problem}. {fix}{created}", EXIT_INVALID_REQUEST)
    if isinstance(err, ClusterNotFoundError):
        return CommandError(str(err), EXIT_NOT_FOUND)
    if isinstance(err, (ClusterStartError, ClusterConflictError)):
        return CommandError(str(err), EXIT_START_FAILED)
    if isinstance(err, RayJobError):
        return CommandError(str(err), EXIT_JOB_FAILED)
    if isinstance(err, ApiException):
        return CommandError(
            f"the Kubernetes API returned HTTP {err.status} {err.reason}: {_api_message(err)}", EXIT_PLATFORM
        )
    if isinstance(err, urllib3.exceptions.HTTPError):
        return CommandError(
            f"the Kubernetes API cannot be reached: {err}. Check KUBE_API_URL or the kubeconfig context.",
            EXIT_PLATFORM,
        )
    if isinstance(err, (DashboardError, HistoryError, PlatformError)):
        return CommandError(str(err), EXIT_PLATFORM)
    if isinstance(err, ConfigException):
        return CommandError(
            f"no Kubernetes API is configured ({err}). Set KUBE_API_URL, or KUBECONFIG and KUBE_CONTEXT.",
            EXIT_PLATFORM,
        )
    # These are OSErrors too, but they come from a cluster's dashboard, not from the state folder. Ray's
    # job client raises the built-in ConnectionError when the dashboard does not respond.
    if isinstance(err, (requests.exceptions.RequestException, ConnectionError)):
        return CommandError(
            f"the Ray dashboard did not respond: {failure_reason(err)}. Check with `trainctl status NAME` that the "
            "cluster is ready.",
            EXIT_PLATFORM,
        )
    if isinstance(err, psutil.AccessDenied):
        return CommandError(
            f"a process of a local cluster could not be signalled: {err}. A cluster started by another user "
            "can only be stopped by that user or root.",
            EXIT_PLATFORM,
        )
    if isinstance(err, OSError):
        return CommandError(f"{err}. Check that TRAINCTL_HOME ({state_dir()}) is a writable folder.", EXIT_PLATFORM)
    return None


def handle_errors(command: F) -> F:
    """Turn the platform's errors into messages and the documented exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # The reader of the output has gone, as `head` does in `trainctl history | head`. Like other
            # command-line tools, stop without a message, and keep Python's exit flush from failing again.
            if command.__name__ == "submit":
                click.echo("The reader of the job's log exited, so the job was stopped.", err=True)
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            sys.exit(EXIT_BROKEN_PIPE)
        except Exception as err:
            converted = command_error(err, creates=command.__name__ in _CREATING_COMMANDS)
            if converted is None or converted is err:
                raise
            raise converted from err

    return wrapper  # type: ignore[return-value]


def _api_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "{}").get("message") or err.body)
    except ValueError:
        return str(err.body)


# The size and shape of a pipeline run's cluster. trainctl takes them from its options, so
# a value set for the pipelines neither applies to a command nor fails it.
_PIPELINE_CLUSTER_VARIABLES = frozenset(
    {
        "RAY_WORKERS",
        "RAY_CPUS_PER_WORKER",
        "RAY_GPUS_PER_WORKER",
        "RAY_MEMORY_PER_WORKER",
        "KUBERAY_TEMPLATE",
        "KUBERAY_IMAGE",
        "KUBERAY_GPU_TYPE",
        "KUBERAY_TEAM",
        "RAY_MAX_CLUSTER_AGE_HOURS",
    }
)


def _settings(backend: str | None, namespace: str | None) -> RayClusterResource:
    environ = {key: value for key, value in os.environ.items() if key not in _PIPELINE_CLUSTER_VARIABLES}
    if backend:
        environ["RAY_BACKEND"] = backend
    if namespace:
        environ["KUBERAY_NAMESPACE"] = namespace
    try:
        return RayClusterResource.from_env(environ, check_request=False)
    except InvalidRequestError as err:
        if namespace and err.field == "KUBERAY_NAMESPACE":
            # The value came from --namespace, so the error names the option.
            raise InvalidRequestError("namespace", err.problem, err.fix) from err
        raise


def _clusters(backend: str | None, namespace: str | None) -> Clusters:
    settings = _settings(backend, namespace)
    return KubeRayClusters(settings) if settings.backend == "kuberay" else LocalClusters(settings)


def _history(url: str | None) -> JobHistory | None:
    """Open the history to read; ``None`` when the SQLite file that the URL names does not exist.

    Opening a missing SQLite file would create it, so a mistyped path would read as an empty
    history and leave a file behind. The default history, when no URL is set, is opened as usual.
    """
    chosen = url or os.environ.get("TRAINING_HISTORY_URL") or None
    if chosen is not None and missing_sqlite_file(chosen) is not None:
        return None
    return JobHistory(chosen)


def _missing_history(url: str | None) -> InvalidRequestError:
    field = "--history-url" if url else "TRAINING_HISTORY_URL"
    chosen = url or os.environ.get("TRAINING_HISTORY_URL", "")
    return InvalidRequestError(
        field,
        f"the job history file {missing_sqlite_file(chosen)} does not exist",
        f"Check the path in {field}. The file is created when the first job is recorded there.",
    )


def backend_options(command: F) -> F:
    """Add ``--backend`` and ``--namespace``, whose defaults come from RAY_BACKEND and KUBERAY_NAMESPACE."""
    command = click.option(
        "--namespace", default=None, help="Namespace of the RayClusters. [default: KUBERAY_NAMESPACE or 'default']"
    )(command)
    return click.option(
        "--backend",
        type=click.Choice(["local", "kuberay"]),
        default=None,
        help="Where clusters run. [default: RAY_BACKEND or 'local']",
    )(command)


def output_option(command: F) -> F:
    """Add ``--output table|json``."""
    return click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)(
        command
    )


def request_options(command: F) -> F:
    """Add the options that describe a cluster, shared by ``up`` and ``render``."""
    options = [
        click.option("--name", default=None, help="Cluster name. [default: ray-<user>-<random>]"),
        click.option(
            "--ttl",
            default=None,
            help="Lifetime, such as 8h, 90m or 1d, up to the policy's maximum (72h by default). [default: 8h]",
        ),
        click.option("--team", default=None, help="Team label, for listings and cost reports."),
        click.option("--image", default=None, help="Ray image; must pass the policy's allow-list."),
        click.option("--gpu-type", default=None, help="GPU type the policy knows, such as l4 or a100."),
        click.option("--gpus-per-worker", type=int, default=0, show_default=True, help="GPUs of each worker."),
        click.option(
            "--memory",
            default="2Gi",
            show_default=True,
            help="Memory of each worker, such as 8Gi, at least 512Mi. A number without a unit is bytes.",
        ),
        click.option(
            "--cpus",
            type=int,
            default=1,
            show_default=True,
            help="CPUs of each worker: at most the policy's max_cpus_per_pod, or this machine's CPUs when local.",
        ),
        click.option("--workers", type=int, default=2, show_default=True, help="Worker nodes (pods on KubeRay)."),
        click.option(
            "--template",
            type=click.Choice(["cpu", "gpu"]),
            default=None,
            help="Vetted template of the RayCluster. [default: gpu with GPUs, else cpu]",
        ),
    ]
    for option in options:
        command = option(command)
    return command


def _up_request(
    *,
    template: str | None,
    workers: int,
    cpus: int,
    memory: str,
    gpus_per_worker: int,
    gpu_type: str | None,
    image: str | None,
    team: str | None,
    ttl: str | None,
    name: str | None,
) -> UpRequest:
    owner = current_user()
    if name is not None:
        check_cluster_name(name)
    if team is not None:
        check_label_value(team, field="team")
    return UpRequest(
        template=template,
        workers=workers,
        cpus_per_worker=cpus,
        memory_per_worker=parse_memory(memory, field="memory_per_worker"),
        gpus_per_worker=gpus_per_worker,
        gpu_type=gpu_type,
        image=image,
        team=team,
        ttl_minutes=None if ttl is None else parse_duration_minutes(ttl, field="ttl"),
        name=name or default_cluster_name(owner),
        owner=owner,
    )


def _warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="training-pipelines")
def cli() -> None:
    """Ray clusters for experiments, on the platform's templates and policy.

    \b
    Example:
      trainctl up --workers 2 --memory 4Gi --ttl 2h
      trainctl submit ray-alice-3f2a1c -- python -c "import ray; ray.init(); print(ray.cluster_resources())"
      trainctl down ray-alice-3f2a1c
    """


@cli.command()
@request_options
@backend_options
@handle_errors
def up(backend: str | None, namespace: str | None, **request: Any) -> None:
    """Create a cluster and wait until it is ready.

    Ready means, locally, that every worker node has registered, and on KubeRay that
    the head pod is ready and its dashboard responds (workers may still be starting).

    The request is checked against the policy before anything is created. Progress
    goes to stderr; the name, dashboard and start-up time to stdout. Ctrl-C while it
    starts removes what was created.

    \b
    Example:
      trainctl up --backend kuberay --template gpu --workers 2 --gpus-per-worker 1 \\
        --gpu-type l4 --memory 16Gi --team ranking --ttl 4h
    """
    clusters = _clusters(backend, namespace)
    up_request = _up_request(**request)
    clusters.check(up_request)

    started_at = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - started_at:5.1f}s] {message}", err=True)

    started = clusters.up(up_request, progress)
    expires = f"{started.expires_at:%Y-%m-%d %H:%M} UTC" if started.expires_at else "when its run ends"
    click.echo(f"name:      {started.name}")
    click.echo(f"dashboard: {started.dashboard_url}")
    click.echo(f"ready in:  {started.startup_s:.1f} s")
    click.echo(f"expires:   {expires}")


@cli.command()
@request_options
@click.option("--namespace", default=None, help="Namespace of the RayCluster. [default: KUBERAY_NAMESPACE]")
@handle_errors
def render(namespace: str | None, **request: Any) -> None:
    """Print the RayCluster manifest that `up --backend kuberay` would create, and call no API.

    The manifest has the policy applied and passes the KubeRay CRD schema, so
    `kubectl apply -f` accepts it as printed.

    \b
    Example:
      trainctl render --workers 4 --memory 8Gi --team ranking > cluster.yaml
    """
    clusters = KubeRayClusters(_settings("kuberay", namespace))
    click.echo(manifest_to_yaml(clusters.render(_up_request(**request))), nl=False)


def _summary_row(summary: ClusterSummary, now: dt.datetime) -> list[str]:
    expires_at = summary.expires_at
    return [
        summary.name,
        summary.team or "-",
        summary.describe_origin(),
        format_duration((now - summary.created).total_seconds()),
        "-" if expires_at is None else format_duration((expires_at - now).total_seconds()),
        f"{summary.workers_ready}/{summary.workers_desired}",
        f"{summary.cpus.normalize():f}",
        str(summary.gpus),
        format_size(summary.memory),
        summary.state,
    ]


@cli.command(name="list")
@output_option
@backend_options
@handle_errors
def list_clusters(backend: str | None, namespace: str | None, output: str) -> None:
    """List active clusters: origin, age, time left, workers ready of desired, resources, state.

    \b
    Example:
      trainctl list --backend kuberay --namespace ml-training -o json
    """
    summaries = _clusters(backend, namespace).list()
    now = _now()
    if output == "json":
        _echo_json([summary.to_dict(now) for summary in summaries])
        return
    if not summaries:
        click.echo("No clusters.")
        return
    headers = ["NAME", "TEAM", "ORIGIN", "AGE", "EXPIRES IN", "WORKERS", "CPUS", "GPUS", "MEMORY", "STATE"]
    click.echo(_table(headers, [_summary_row(summary, now) for summary in summaries]))


def _running_jobs(url: str) -> list[dict[str, Any]]:
    from ray.job_submission import JobSubmissionClient

    try:
        jobs = JobSubmissionClient(url).list_jobs()
    except (ConnectionError, RuntimeError) as err:
        raise DashboardError(url, str(err)) from err
    return [
        {"job_id": job.submission_id or job.job_id, "status": str(job.status.value), "entrypoint": job.entrypoint}
        for job in jobs
        if not job.status.is_terminal()
    ]


@cli.command()
@click.argument("name")
@output_option
@backend_options
@handle_errors
def status(name: str, backend: str | None, namespace: str | None, output: str) -> None:
    """Show a cluster's conditions, recent events, running jobs and each node's usage.

    \b
    Example:
      trainctl status ray-alice-3f2a1c
    """
    clusters = _clusters(backend, namespace)
    summary = clusters.find(name)
    details = clusters.details(name)
    with clusters.dashboard(name) as url:
        try:
            nodes = node_usage(url)
            jobs = _running_jobs(url)
            unreachable = ""
        except DashboardError as err:
            nodes, jobs, unreachable = [], [], str(err)

    now = _now()
    if output == "json":
        _echo_json(
            {
                "cluster": summary.to_dict(now),
                **details,
                "jobs": jobs,
                "nodes": [node.to_dict() for node in nodes],
                "dashboard_error": unreachable or None,
            }
        )
        return

    click.echo(
        _table(
            ["NAME", "TEAM", "ORIGIN", "AGE", "EXPIRES IN", "WORKERS", "CPUS", "GPUS", "MEMORY", "STATE"],
            [_summary_row(summary, now)],
        )
    )
    click.echo("\nConditions:")
    for condition in details["conditions"] or [{"type": "(none)"}]:
        reason = f" {condition.get('reason')}" if condition.get("reason") else ""
        message = f": {condition.get('message')}" if condition.get("message") else ""
        click.echo(f"  {condition.get('type')}={condition.get('status', '')}{reason}{message}")
    click.echo("\nRecent events:")
    for event in details["events"] or [{"message": "(none)"}]:
        prefix = " ".join(str(event.get(key) or "") for key in ("time", "type", "reason", "object")).strip()
        click.echo(f"  {prefix} {event.get('message', '')}".rstrip())
    click.echo("\nRunning jobs:")
    for job in jobs or [{"job_id": "(none)", "status": "", "entrypoint": ""}]:
        click.echo(f"  {job['job_id']}  {job['status']}  {job['entrypoint']}".rstrip())
    click.echo("\nNodes:")
    if unreachable:
        click.echo(f"  {unreachable}")
    rows = []
    for node in nodes:
        gpu = ", ".join(
            f"{g.name} {g.utilization_percent or 0:.0f}% {g.memory_used_mib or 0:.0f}/{g.memory_total_mib or 0:.0f} MiB"
            for g in node.gpus
        )
        memory = (
            "-"
            if node.memory_total is None
            else (f"{format_size(node.memory_used or 0)}/{format_size(node.memory_total)}")
        )
        rows.append(
            [
                "head" if node.is_head else "worker",
                node.node_id[:12],
                node.state,
                f"{node.cpus:g}",
                "-" if node.cpu_percent is None else f"{node.cpu_percent:.0f}%",
                memory,
                gpu or "-",
            ]
        )
    if rows:
        click.echo(
            _table(
                ["  NODE", "ID", "STATE", "CPUS", "CPU USE", "MEMORY USED", "GPU (USE, MEMORY)"],
                [["  " + row[0], *row[1:]] for row in rows],
            )
        )


# Ray writes each job's driver log to a file named after the job id.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for value in values:
        key, sep, content = value.partition("=")
        if not sep:
            # The value is not repeated: what was meant as NAME=VALUE may hold a secret.
            raise InvalidRequestError("--env", "a value has no '='", "Write --env NAME=value.")
        if not ENV_NAME.fullmatch(key):
            raise InvalidRequestError(
                "--env",
                f"{key!r} is not a valid variable name",
                "Use letters, digits and '_', not starting with a digit.",
            )
        env[key] = content
    return env


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--working-dir", type=click.Path(exists=True, file_okay=False), help="Folder uploaded for the job.")
@click.option("--env", "env", multiple=True, help="Environment variable of the job, KEY=VALUE; repeatable.")
@click.option("--job-id", default=None, help="Submission id. [default: <cluster>-<random>]")
@click.option("--timeout", default="6h", show_default=True, help="Stop the job after this long.")
@click.option("--history-url", default=None, help="Job history database. [default: TRAINING_HISTORY_URL]")
@backend_options
@handle_errors
def submit(
    name: str,
    command: tuple[str, ...],
    working_dir: str | None,
    env: tuple[str, ...],
    job_id: str | None,
    timeout: str,
    history_url: str | None,
    backend: str | None,
    namespace: str | None,
) -> None:
    """Run COMMAND as a Ray job on cluster NAME, stream its logs, and exit with its outcome.

    The job is recorded in the job history, which keeps its status and last log lines
    after the cluster is gone. Ctrl-C stops the job.

    \b
    Example:
      trainctl submit ray-alice-3f2a1c --working-dir . -- python train.py --epochs 3
    """
    # The arguments are checked before any cluster is looked up.
    entrypoint = shlex.join(command)
    timeout_s = parse_duration_minutes(timeout, field="--timeout") * 60.0
    runtime_env: dict[str, Any] = {"working_dir": working_dir} if working_dir else {}
    env_vars = _parse_env(env)
    if job_id is not None and not JOB_ID.fullmatch(job_id):
        raise InvalidRequestError(
            "--job-id",
            f"{job_id!r} is not a valid job id",
            "Use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    clusters = _clusters(backend, namespace)
    summary = clusters.find(name)
    if summary.state == "stopping":
        raise CommandError(
            f"{name} is stopping and accepts no new jobs. Run `trainctl status {name}` for the reason, "
            "or start another cluster with `trainctl up`.",
            EXIT_NOT_FOUND,
        )
    submission_id = job_id or f"{name}-{uuid.uuid4().hex[:8]}"
    history = open_history(history_url, warn=_warn)
    if history is not None and history.get(submission_id) is not None:
        history.close()
        raise InvalidRequestError(
            "--job-id", f"job {submission_id!r} is already in the history", "Choose another --job-id, or leave it out."
        )
    if history is not None:
        # `trainctl down`, and a local cluster's keeper, then record the end of its unfinished jobs here too.
        try:
            clusters.note_history(summary, portable_history_url(history_url or default_history_url()))
        except (OSError, ValueError) as err:
            stopper = "the cluster's keeper" if clusters.backend == "local" else "`trainctl down`"
            _warn(f"{stopper} will not update this job's history if it stops the cluster: {err}")

    from ray.job_submission import JobSubmissionClient

    try:
        with clusters.dashboard(name) as url:
            record = JobRecord(
                job_id=submission_id,
                cluster=name,
                backend=clusters.backend,
                namespace=summary.namespace or None,
                template=summary.template or None,
                request={
                    "workers": summary.workers_desired,
                    "cpus": float(summary.cpus),
                    "gpus": summary.gpus,
                    "memory_bytes": summary.memory,
                },
                entrypoint=entrypoint,
                submitter=current_user(),
                origin="manual",
                dashboard_url=url,
                submitted_at=_now(),
            )
            recorder = HistoryRecorder(history, record, warn=_warn)
            click.echo(f"Submitted job {submission_id} to {name}", err=True)
            try:
                outcome = run_job(
                    JobSubmissionClient(url),
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    on_log_line=click.echo,
                    env_vars=env_vars or None,
                    runtime_env=runtime_env or None,
                    timeout_s=timeout_s,
                    observer=recorder,
                )
            except RayJobError as err:
                # The log was streamed above, so only the outcome is repeated.
                raise CommandError(f"job {err.job_id} ended as {err.status}: {err.reason}", EXIT_JOB_FAILED) from err
    finally:
        if history is not None:
            history.close()
    click.echo(f"Job {outcome.job_id} succeeded in {outcome.running_s:.1f} s", err=True)


def _follow_logs(url: str, job_id: str, *, follow: bool) -> str:
    """Print the job's log, and with ``follow`` keep printing until the job ends; return its final status."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    offset = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        click.echo(logs[offset:], nl=False)
        offset = len(logs)
        if not follow or status.is_terminal():
            return str(status.value)
        time.sleep(JOB_POLL_INTERVAL_S)


@cli.command()
@click.argument("name")
@click.option("--job", "job_id", default=None, help="Job id. [default: the cluster's latest job]")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends; exit 1 unless it succeeds.")
@click.option("--history-url", default=None, help="Job history database. [default: TRAINING_HISTORY_URL]")
@backend_options
@handle_errors
def logs(
    name: str, job_id: str | None, follow: bool, history_url: str | None, backend: str | None, namespace: str | None
) -> None:
    """Print a job's log from the cluster; once the cluster is gone, the last lines the history kept.

    \b
    Example:
      trainctl logs ray-alice-3f2a1c --follow
    """
    clusters = _clusters(backend, namespace)
    history = _history(history_url)
    with contextlib.ExitStack() as stack:
        record = None
        if history is not None:
            stack.enter_context(history)
            record = history.get(job_id) if job_id else history.latest(name)
        if record is not None and record.cluster != name:
            raise CommandError(f"Job {job_id} ran on cluster {record.cluster}, not {name}.", EXIT_NOT_FOUND)
        try:
            clusters.find(name)
        except ClusterNotFoundError as err:
            if record is None and job_id is not None:
                listed = "" if history is None else f" `trainctl history --cluster {name}` lists its jobs."
                raise CommandError(
                    f"No job {job_id!r} in the job history, and no cluster {name} is running.{listed}",
                    EXIT_NOT_FOUND,
                ) from err
            if record is None:
                raise
            click.echo(
                f"Cluster {name} is gone; these are the last lines of job {record.job_id} kept in the history "
                f"(status {record.status}).",
                err=True,
            )
            click.echo(record.log_tail)
            if follow and record.status != "SUCCEEDED":
                sys.exit(EXIT_JOB_FAILED)
            return

        with clusters.dashboard(name) as url:
            target = job_id or (record.job_id if record is not None else _latest_job_on(url, name))
            try:
                final = _follow_logs(url, target, follow=follow)
            except RuntimeError as err:
                if "does not exist" not in str(err):
                    raise
                raise CommandError(
                    f"No job {target!r} on cluster {name}. `trainctl history` lists jobs.", EXIT_NOT_FOUND
                ) from err
    if follow and final != "SUCCEEDED":
        click.echo(f"Job {target} ended as {final}", err=True)
        sys.exit(EXIT_JOB_FAILED)


def _latest_job_on(url: str, name: str) -> str:
    from ray.job_submission import JobSubmissionClient

    jobs = [job for job in JobSubmissionClient(url).list_jobs() if job.submission_id]
    if not jobs:
        raise CommandError(f"Cluster {name} has run no job yet; submit one with `trainctl submit`.", EXIT_NOT_FOUND)
    return str(max(jobs, key=lambda job: job.start_time or 0).submission_id)


@cli.command()
@click.argument("name", required=False)
@click.option("--expired", is_flag=True, help="Delete every cluster whose lifetime has passed.")
@click.option("--mine", is_flag=True, help="Delete every cluster you made with trainctl up.")
@click.option("--force", is_flag=True, help="Also delete a cluster that a running Dagster run uses.")
@click.option("--history-url", default=None, help="Job history database. [default: TRAINING_HISTORY_URL]")
@backend_options
@handle_errors
def down(
    name: str | None,
    expired: bool,
    mine: bool,
    force: bool,
    history_url: str | None,
    backend: str | None,
    namespace: str | None,
) -> None:
    """Delete a cluster, every expired cluster, or every cluster you made.

    Jobs still running on a deleted cluster are marked LOST in the history.

    \b
    Example:
      trainctl down ray-alice-3f2a1c
      trainctl down --expired --backend kuberay
    """
    if sum((name is not None, expired, mine)) != 1:
        raise click.UsageError("Give exactly one of NAME, --expired or --mine.")
    clusters = _clusters(backend, namespace)
    now = _now()
    if name is not None:
        summary = clusters.find(name)
        if summary.origin == "dagster" and not force:
            raise CommandError(
                f"{name} belongs to Dagster run {summary.run_id}"
                + (f" (partition {summary.partition})" if summary.partition else "")
                + "; deleting it fails that run. Terminate the run in the Dagster UI, or add --force.",
                EXIT_INVALID_REQUEST,
            )
        targets = [summary]
    elif expired:
        targets = [summary for summary in clusters.list() if summary.expired(now)]
    else:
        user = current_user()
        targets = [summary for summary in clusters.list() if summary.origin == "manual" and summary.owner == user]

    if not targets:
        click.echo("No cluster to delete.")
        return
    history = open_history(history_url, warn=_warn)
    failed: list[tuple[str, CommandError]] = []
    try:
        for target in targets:
            try:
                lost = _delete(clusters, target, history, history_url)
            except Exception as err:
                failure = command_error(err)
                if name is not None or failure is None:
                    raise
                if isinstance(err, ClusterNotFoundError):
                    # The keeper or another `down` removed it since the list was read.
                    click.echo(f"{target.name} is already gone")
                    continue
                _warn(f"{target.name} was not deleted: {failure.message}")
                failed.append((target.name, failure))
                continue
            note = f"; {lost} unfinished job(s) marked LOST" if lost else ""
            click.echo(f"Deleted {target.name}{note}")
    finally:
        if history is not None:
            history.close()
    if failed:
        names = ", ".join(failed_name for failed_name, _ in failed)
        raise CommandError(
            f"{len(failed)} of {len(targets)} cluster(s) were not deleted: {names}. The warnings above give the "
            "reasons. Fix them and run the command again.",
            failed[0][1].exit_code,
        )


def _delete(clusters: Clusters, cluster: ClusterSummary, history: JobHistory | None, history_url: str | None) -> int:
    """Delete ``cluster`` and record its jobs' end in ``history`` and in each history noted for it.

    A failing history only gets a warning, so it never blocks the delete. Returns how many
    unfinished jobs were marked LOST.
    """
    name = cluster.name
    opened = [open_history(url, warn=_warn) for url in other_histories(history_url, clusters.noted_histories(cluster))]
    others = [item for item in opened if item is not None]
    histories = ([] if history is None else [(history, "the job history")]) + [
        (other, "a history that submit used") for other in others
    ]
    message = "its cluster was deleted before the job ended"
    try:
        for store, label in histories:
            try:
                _settle_jobs(clusters, store, name)
            except HistoryError as err:
                _warn(f"the jobs of {name} were not updated in {label}: {err}")
        clusters.delete(name)
        lost = 0
        for store, label in histories:
            try:
                lost += store.mark_lost(name, message=message, at=_now())
            except HistoryError as err:
                _warn(f"the jobs of {name} were not marked LOST in {label}: {err}")
        return lost
    finally:
        for other in others:
            other.close()


def _settle_jobs(clusters: Clusters, history: JobHistory, name: str) -> None:
    """Record the real end of the cluster's jobs that no submitter saw finish, and the log of those still running."""
    unfinished = unfinished_jobs(history, name)
    if not unfinished:
        return
    try:
        with clusters.dashboard(name) as url:
            settle_jobs(history, unfinished, url)
    except (DashboardError, ConnectionError, RuntimeError, requests.exceptions.RequestException) as err:
        _warn(f"the jobs of {name} could not be read before deleting it: {err}")


def _history_row(record: JobRecord) -> list[str]:
    duration = record.duration_s
    # One line per job: a script passed with `python -c` may span several.
    entrypoint = " ".join(record.entrypoint.split())
    return [
        record.job_id,
        record.cluster,
        record.status,
        record.submitter,
        f"{record.submitted_at:%Y-%m-%d %H:%M:%S}",
        "-" if duration is None else format_duration(duration),
        record.partition or "-",
        entrypoint if len(entrypoint) <= 60 else entrypoint[:57] + "...",
    ]


@cli.command()
@click.option("--cluster", default=None, help="Only jobs of this cluster.")
@click.option("--job", "job_id", default=None, help="One job, with its request and last log lines.")
@click.option("--mine", is_flag=True, help="Only jobs you submitted.")
@click.option("--status", "status_filter", default=None, help="Only jobs with this status, such as FAILED.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=100_000),
    default=50,
    show_default=True,
    help="Show at most this many jobs.",
)
@click.option("--history-url", default=None, help="Job history database. [default: TRAINING_HISTORY_URL]")
@output_option
@handle_errors
def history(
    cluster: str | None,
    job_id: str | None,
    mine: bool,
    status_filter: str | None,
    limit: int,
    history_url: str | None,
    output: str,
) -> None:
    """List jobs run through the platform, from pipelines and trainctl, including those whose cluster is gone.

    \b
    Example:
      trainctl history --status FAILED --limit 10
      trainctl history --job ray-alice-3f2a1c-1a2b3c4d
    """
    store = _history(history_url)
    if store is None:
        raise _missing_history(history_url)
    with store:
        if job_id is not None:
            record = store.get(job_id)
            if record is None:
                raise CommandError(f"No job {job_id!r} in the history at {store.url}.", EXIT_NOT_FOUND)
            if output == "json":
                _echo_json(record.to_dict())
                return
            for key, value in record.to_dict().items():
                if key != "log_tail":
                    printed = value
                    if isinstance(value, dict):
                        printed = json.dumps(value)
                    elif value is None:
                        printed = "-"
                    click.echo(f"{key + ':':15} {printed}")
            click.echo(f"log tail:\n{record.log_tail}")
            return
        statuses = None if status_filter is None else status_filter.upper()
        if statuses is not None and statuses not in TERMINAL_STATUSES | {"PENDING", "RUNNING"}:
            raise click.BadParameter(
                f"{status_filter!r} is not a job status; use one of PENDING, RUNNING, "
                f"{', '.join(sorted(TERMINAL_STATUSES))}",
                param_hint="--status",
            )
        records = store.list(cluster=cluster, submitter=current_user() if mine else None, status=statuses, limit=limit)
    if output == "json":
        _echo_json([record.to_dict() for record in records])
        return
    if not records:
        click.echo("No jobs recorded.")
        return
    headers = ["JOB", "CLUSTER", "STATUS", "SUBMITTER", "SUBMITTED (UTC)", "DURATION", "PARTITION", "ENTRYPOINT"]
    click.echo(_table(headers, [_history_row(record) for record in records]))


@cli.command(name="exit-codes")
def exit_codes() -> None:
    """Print what each exit code of trainctl means.

    \b
    Example:
      trainctl exit-codes
    """
    for code, meaning in EXIT_CODES.items():
        click.echo(f"{code:>3}  {meaning}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``trainctl`` console script."""
    cli.main(args=argv, prog_name="trainctl")
