"""Security of the KubeRay backend, without Ray: Pod Security Standard, secrets, dashboard exposure and RBAC.

The RBAC tests drive one lifecycle of the platform's Kubernetes calls against the API
stand-in and compare the requests it records with the Role in ``deploy/rbac.yaml``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from ray.job_submission import JobStatus

from resources.cli.main import cli
from resources.cluster import RayClusterResource
from resources.errors import ClusterStartError, InvalidRequestError
from resources.history import HistoryError, JobHistory
from resources.jobs import run_job
from resources.kuberay import backend as backend_module
from resources.kuberay import manifest as manifest_module
from resources.kuberay.manifest import (
    ClusterRequest,
    RunContext,
    manifest_to_yaml,
    render_raycluster,
)
from resources.kuberay.policy import Policy, load_policy
from resources.recorder import open_history
from tests.kube_standin import RAYCLUSTERS, KubeStandin, RecordedRequest, WatchEvent
from training_pipelines.defs.clusters import orphaned_ray_clusters_sensor

GIB = 1024**3
ROLE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
NAMESPACE = "ml-training"
# The packaged templates, kept before any test replaces the loader with an edited copy.
load_template = manifest_module._load_template


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def make_context(**overrides: Any) -> RunContext:
    fields: dict[str, Any] = {
        "run_id": "5f3c2a1e-8b7d-4c6e-9f0a-1b2c3d4e5f60",
        "job_name": "daily_retrain_job",
        "namespace": NAMESPACE,
        "code_location": "training_pipelines",
        "owner": "ranking-team@example.com",
        "run_url": "https://dagster.example.com/runs/5f3c2a1e",
    }
    fields.update(overrides)
    return RunContext(**fields)


# Requests that cover both templates, with and without the autoscaler sidecar.
REQUESTS = {
    "cpu": ClusterRequest(template="cpu", workers=2),
    "cpu-autoscaling": ClusterRequest(template="cpu", workers=1, min_workers=0, max_workers=4),
    "gpu": ClusterRequest(template="gpu", workers=2, gpus_per_worker=1, gpu_type="l4", memory_per_worker=16 * GIB),
    "gpu-autoscaling": ClusterRequest(
        template="gpu", workers=1, min_workers=1, max_workers=2, gpus_per_worker=2, gpu_type="a100"
    ),
}


# ----- the restricted Pod Security Standard -----

# From https://kubernetes.io/docs/concepts/security/pod-security-standards/ ("restricted" includes "baseline").
PSS_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
PSS_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
PSS_SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
PSS_HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


def pod_templates(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the path and the pod template of the head group and of every worker group."""
    spec = manifest["spec"]
    yield "spec.headGroupSpec.template", spec["headGroupSpec"]["template"]
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield f"spec.workerGroupSpecs[{index}].template", group["template"]


def _container_violations(container: dict[str, Any], *, path: str, pod_context: dict[str, Any]) -> list[str]:
    context = container.get("securityContext") or {}
    problems = []
    if context.get("privileged") is True:
        problems.append("securityContext.privileged is true")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append(f"securityContext.allowPrivilegeEscalation is {context.get('allowPrivilegeEscalation')!r}")

    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if non_root is not True:
        problems.append(f"securityContext.runAsNonRoot is {non_root!r} in the container and the pod")
    if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
        problems.append("securityContext.runAsUser is 0")

    seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
    if seccomp not in PSS_SECCOMP_TYPES:
        problems.append(f"securityContext.seccompProfile.type is {seccomp!r} in the container and the pod")

    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append(f"securityContext.capabilities.drop is {capabilities.get('drop')!r}, without ALL")
    added = sorted(set(capabilities.get("add") or []) - PSS_ADDED_CAPABILITIES)
    if added:
        problems.append(f"securityContext.capabilities.add has {added}")
    if context.get("procMount") not in (None, "Default"):
        problems.append(f"securityContext.procMount is {context['procMount']!r}")

    for index, port in enumerate(container.get("ports") or []):
        if port.get("hostPort"):
            problems.append(f"ports[{index}].hostPort is {port['hostPort']}")
    return [f"{path}: {problem}" for problem in problems]


def restricted_violations(manifest: dict[str, Any]) -> list[str]:
    """Check every pod template of a RayCluster, and the autoscaler sidecar, against the restricted standard.

    Each violation reads ``<path of the pod or container> (<container name>): <field> ...``; an
    empty list means the manifest passes.
    """
    violations = []
    for template_path, template in pod_templates(manifest):
        pod_spec = template.get("spec") or {}
        pod_path = f"{template_path}.spec"
        pod_context = pod_spec.get("securityContext") or {}

        for name in PSS_HOST_NAMESPACES:
            if pod_spec.get(name) is True:
                violations.append(f"{pod_path}: {name} is true")
        for index, volume in enumerate(pod_spec.get("volumes") or []):
            for volume_type in sorted(set(volume) - {"name"} - PSS_VOLUME_TYPES):
                violations.append(f"{pod_path}.volumes[{index}] ({volume.get('name')}): volume type {volume_type}")
        pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
        if pod_seccomp is not None and pod_seccomp not in PSS_SECCOMP_TYPES:
            violations.append(f"{pod_path}: securityContext.seccompProfile.type is {pod_seccomp!r}")
        if pod_context.get("runAsNonRoot") is False:
            violations.append(f"{pod_path}: securityContext.runAsNonRoot is false")

        for list_name in ("initContainers", "containers", "ephemeralContainers"):
            for index, container in enumerate(pod_spec.get(list_name) or []):
                path = f"{pod_path}.{list_name}[{index}] ({container.get('name')})"
                violations.extend(_container_violations(container, path=path, pod_context=pod_context))

        # KubeRay adds the autoscaler to the head pod with autoscalerOptions.securityContext.
        if template_path.startswith("spec.headGroupSpec") and manifest["spec"].get("enableInTreeAutoscaling"):
            sidecar = {"securityContext": (manifest["spec"].get("autoscalerOptions") or {}).get("securityContext")}
            violations.extend(
                _container_violations(sidecar, path="spec.autoscalerOptions (autoscaler)", pod_context=pod_context)
            )
    return violations


@pytest.mark.parametrize("case", list(REQUESTS))
def test_rendered_pods_meet_restricted_standard(policy: Policy, case: str) -> None:
    manifest = render_raycluster(request=REQUESTS[case], context=make_context(), policy=policy)

    assert restricted_violations(manifest) == []


def test_autoscaler_sidecar_is_checked(policy: Policy) -> None:
    manifest = render_raycluster(request=REQUESTS["cpu-autoscaling"], context=make_context(), policy=policy)
    del manifest["spec"]["autoscalerOptions"]["securityContext"]

    violations = restricted_violations(manifest)

    assert "spec.autoscalerOptions (autoscaler): securityContext.allowPrivilegeEscalation is None" in violations
    assert "spec.autoscalerOptions (autoscaler): securityContext.capabilities.drop is None, without ALL" in violations


def test_checker_names_broken_fields(policy: Policy) -> None:
    manifest = render_raycluster(request=REQUESTS["gpu"], context=make_context(), policy=policy)
    head_spec = manifest["spec"]["headGroupSpec"]["template"]["spec"]
    head_spec["hostNetwork"] = True
    head_spec["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}})
    head = head_spec["containers"][0]["securityContext"]
    head["privileged"] = True
    head["allowPrivilegeEscalation"] = True
    head["capabilities"] = {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"]}
    head_spec["containers"][0]["ports"][0]["hostPort"] = 6379
    worker_spec = manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker_spec["securityContext"]["runAsNonRoot"] = False
    del worker_spec["containers"][0]["securityContext"]["runAsNonRoot"]
    worker_spec["containers"][0]["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    worker_spec["initContainers"] = [{"name": "setup", "image": "rayproject/ray:2.60.0-py311-gpu"}]

    violations = restricted_violations(manifest)

    head_pod = "spec.headGroupSpec.template.spec"
    head_container = f"{head_pod}.containers[0] (ray-head)"
    worker_pod = "spec.workerGroupSpecs[0].template.spec"
    worker_container = f"{worker_pod}.containers[0] (ray-worker)"
    init_container = f"{worker_pod}.initContainers[0] (setup)"
    assert f"{head_pod}: hostNetwork is true" in violations
    assert f"{head_pod}.volumes[1] (docker): volume type hostPath" in violations
    assert f"{head_container}: securityContext.privileged is true" in violations
    assert f"{head_container}: securityContext.allowPrivilegeEscalation is True" in violations
    assert f"{head_container}: securityContext.capabilities.drop is None, without ALL" in violations
    assert f"{head_container}: securityContext.capabilities.add has ['SYS_ADMIN']" in violations
    assert f"{head_container}: ports[0].hostPort is 6379" in violations
    assert f"{worker_pod}: securityContext.runAsNonRoot is false" in violations
    assert f"{worker_container}: securityContext.runAsNonRoot is False in the container and the pod" in violations
    assert f"{worker_container}: securityContext.seccompProfile.type is 'Unconfined' in the container and the pod" in (
        violations
    )
    assert f"{init_container}: securityContext.privileged is true" not in violations
    assert f"{init_container}: securityContext.allowPrivilegeEscalation is None" in violations
    assert f"{init_container}: securityContext.runAsNonRoot is False in the container and the pod" in violations
    assert f"{init_container}: securityContext.capabilities.drop is None, without ALL" in violations
    assert len(violations) == 13


def insecure_template(name: str) -> dict[str, Any]:
    """Load a template whose pods request every privilege that the policy removes again."""
    template = copy.deepcopy(load_template(name))
    spec = template["spec"]
    insecure = {
        "privileged": True,
        "allowPrivilegeEscalation": True,
        "runAsNonRoot": False,
        "runAsUser": 0,
        "procMount": "Unmasked",
        "capabilities": {"add": ["SYS_ADMIN", "NET_RAW"]},
        "seccompProfile": {"type": "Unconfined"},
    }
    for pod_template in (spec["headGroupSpec"]["template"], spec["workerGroupSpecs"][0]["template"]):
        pod_spec = pod_template["spec"]
        pod_spec["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0, "seccompProfile": {"type": "Unconfined"}}
        pod_spec["containers"][0]["securityContext"] = dict(insecure)
        init = {"name": "setup", "image": "${IMAGE}", "securityContext": dict(insecure)}
        init["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
        pod_spec["initContainers"] = [init]
    return template


@pytest.mark.parametrize("case", list(REQUESTS))
def test_policy_repairs_insecure_template(policy: Policy, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "_load_template", insecure_template)

    manifest = render_raycluster(request=REQUESTS[case], context=make_context(), policy=policy)

    assert restricted_violations(manifest) == []


def edit_head_pod(change: Callable[[dict[str, Any]], None]) -> Callable[[str], dict[str, Any]]:
    """Return a template loader whose head pod spec ``change`` has edited."""

    def load(name: str) -> dict[str, Any]:
        template = copy.deepcopy(load_template(name))
        change(template["spec"]["headGroupSpec"]["template"]["spec"])
        return template

    return load


HOST_ACCESS_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "hostNetwork": (lambda pod: pod.update(hostNetwork=True), "spec.headGroupSpec.template.spec.hostNetwork"),
    "hostPID": (lambda pod: pod.update(hostPID=True), "spec.headGroupSpec.template.spec.hostPID"),
    "hostIPC": (lambda pod: pod.update(hostIPC=True), "spec.headGroupSpec.template.spec.hostIPC"),
    "hostPath": (
        lambda pod: pod.update(volumes=[{"name": "root", "hostPath": {"path": "/"}}]),
        "spec.headGroupSpec.template.spec.volumes[0]",
    ),
    "hostPort": (
        lambda pod: pod["containers"][0]["ports"][1].update(hostPort=8265),
        "spec.headGroupSpec.template.spec.containers[0].ports[1].hostPort",
    ),
}


@pytest.mark.parametrize("case", list(HOST_ACCESS_EDITS))
def test_policy_rejects_host_access(policy: Policy, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    change, field_path = HOST_ACCESS_EDITS[case]
    monkeypatch.setattr(manifest_module, "_load_template", edit_head_pod(change))

    with pytest.raises(InvalidRequestError) as caught:
        render_raycluster(request=REQUESTS["cpu"], context=make_context(), policy=policy)

    assert caught.value.field == field_path


def test_policy_rejects_root_user(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("run_as_user: 0\n")

    with pytest.raises(InvalidRequestError) as caught:
        load_policy(str(path))

    assert caught.value.field == f"{path}: run_as_user"


# ----- the Ray dashboard stays inside the cluster -----


@pytest.mark.parametrize("case", list(REQUESTS))
def test_head_service_internal_by_default(policy: Policy, case: str) -> None:
    manifest = render_raycluster(request=REQUESTS[case], context=make_context(), policy=policy)
    head = manifest["spec"]["headGroupSpec"]
    text = manifest_to_yaml(manifest)

    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert "headService" not in head
    assert "enableIngress" not in head
    assert "ingressOptions" not in head
    assert "LoadBalancer" not in text
    assert "NodePort" not in text
    assert "ingress" not in text.lower()


EXPOSURE_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "LoadBalancer": (lambda head: head.update(serviceType="LoadBalancer"), "spec.headGroupSpec.serviceType"),
    "NodePort": (lambda head: head.update(serviceType="NodePort"), "spec.headGroupSpec.serviceType"),
    "headService type": (
        lambda head: head.update(headService={"spec": {"type": "LoadBalancer"}}),
        "spec.headGroupSpec.headService.spec.type",
    ),
    "headService externalIPs": (
        lambda head: head.update(headService={"spec": {"externalIPs": ["203.0.113.10"]}}),
        "spec.headGroupSpec.headService.spec.externalIPs",
    ),
    "enableIngress": (lambda head: head.update(enableIngress=True), "spec.headGroupSpec.enableIngress"),
}


def edit_head_group(change: Callable[[dict[str, Any]], None]) -> Callable[[str], dict[str, Any]]:
    def load(name: str) -> dict[str, Any]:
        template = copy.deepcopy(load_template(name))
        change(template["spec"]["headGroupSpec"])
        return template

    return load


@pytest.mark.parametrize("case", list(EXPOSURE_EDITS))
def test_exposed_head_is_rejected(policy: Policy, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    change, field_path = EXPOSURE_EDITS[case]
    monkeypatch.setattr(manifest_module, "_load_template", edit_head_group(change))

    with pytest.raises(InvalidRequestError) as caught:
        render_raycluster(request=REQUESTS["cpu"], context=make_context(), policy=policy)

    assert caught.value.field == field_path
    assert "outside the Kubernetes cluster" in caught.value.problem


def test_cluster_ip_head_is_accepted(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        manifest_module, "_load_template", edit_head_group(lambda head: head.update(serviceType="ClusterIP"))
    )

    manifest = render_raycluster(request=REQUESTS["cpu"], context=make_context(), policy=policy)

    assert manifest["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_dashboard_url_setting_leaves_manifest(policy: Policy) -> None:
    # An ingress made outside the platform is configured by the URL alone; the RayCluster stays the same.
    settings = {"backend": "kuberay", "namespace": NAMESPACE}
    internal = RayClusterResource(**settings)
    external = RayClusterResource(**settings, dashboard_url_template="https://ray-{name}.example.com")

    rendered = [
        render_raycluster(request=resource.cluster_request(), context=make_context(), policy=policy)
        for resource in (internal, external)
    ]

    assert rendered[0] == rendered[1]


# ----- no secret value in manifests, errors or logs -----

ACCESS_KEY_ID = "AKIASECURITYTEST7Q3Z"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI-security-test-K7MDENG-bPxRfiCY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token-9f8e7d"
HISTORY_PASSWORD = "hist-p@ss:w/rd-5c2e"
HISTORY_URL = f"postgresql://trainer:{urllib.parse.quote(HISTORY_PASSWORD, safe='')}@127.0.0.1:1/history"
SECRET_VALUES = (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    HISTORY_PASSWORD,
    urllib.parse.quote(HISTORY_PASSWORD, safe=""),
)
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "AWS_SESSION_TOKEN": SESSION_TOKEN,
    "TRAINING_HISTORY_URL": HISTORY_URL,
}


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRET_VALUES:
        assert secret not in text, f"{where} contains a secret value"


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set the object-storage credentials and a history URL with a password, and select the kuberay backend."""
    for name, value in {**SECRET_ENV, "RAY_BACKEND": "kuberay", "KUBERAY_NAMESPACE": NAMESPACE}.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def test_rendered_manifest_has_no_secret(secret_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    resource = RayClusterResource.from_env(secret_env)
    with dg.build_init_resource_context() as context:
        resource.setup_for_execution(context)

    manifest = render_raycluster(
        request=resource.cluster_request(),
        context=resource.run_context(asset="ranking_model"),
        policy=resource.policy(),
    )
    result = CliRunner().invoke(cli, ["render", "--workers", "2"], env=secret_env, catch_exceptions=False)

    assert_no_secret(manifest_to_yaml(manifest), "the rendered RayCluster")
    assert result.exit_code == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr, "trainctl render")
    assert_no_secret(log_text(caplog), "the log")
    # A credential a pod needs must come from a Secret by name (valueFrom.secretKeyRef or envFrom).
    for _, template in pod_templates(manifest):
        for container in template["spec"]["containers"]:
            for variable in container.get("env") or []:
                if variable["name"] in SECRET_ENV:
                    assert "value" not in variable, variable["name"]


INVALID_SETTINGS = {
    "RAY_WORKERS": "many",
    "KUBERAY_TEMPLATE": "tpu",
    "KUBERAY_PORT_FORWARD": "maybe",
    "RAY_MAX_CLUSTER_AGE_HOURS": "1000",
}
POLICY_VIOLATIONS = [
    {"RAY_WORKERS": "100"},
    {"KUBERAY_IMAGE": "registry.example.com/ray:2.60.0"},
    {"KUBERAY_TEMPLATE": "gpu", "RAY_GPUS_PER_WORKER": "1", "KUBERAY_GPU_TYPE": "tpu-v5"},
]


def test_invalid_request_errors_have_no_secret(secret_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages = []
    for name, value in INVALID_SETTINGS.items():
        with pytest.raises(InvalidRequestError) as caught:
            RayClusterResource.from_env({**secret_env, name: value})
        messages.append(str(caught.value))
    for overrides in POLICY_VIOLATIONS:
        resource = RayClusterResource.from_env({**secret_env, **overrides})
        with dg.build_init_resource_context() as context, pytest.raises(InvalidRequestError) as caught:
            resource.setup_for_execution(context)
        messages.append(str(caught.value))
    result = CliRunner().invoke(cli, ["render", "--workers", "1000"], env=secret_env, catch_exceptions=False)

    assert len(messages) == len(INVALID_SETTINGS) + len(POLICY_VIOLATIONS)
    for message in messages:
        assert_no_secret(message, f"the error {message!r}")
    assert result.exit_code != 0
    assert "--workers" in result.stderr
    assert_no_secret(result.stdout + result.stderr, "trainctl render")
    assert_no_secret(log_text(caplog), "the log")


def test_unreachable_history_hides_password(secret_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    with pytest.raises(HistoryError) as caught:
        JobHistory()
    history = open_history(None)
    result = CliRunner().invoke(cli, ["history"], env=secret_env, catch_exceptions=False)

    message = str(caught.value)
    assert "postgresql://trainer:***@127.0.0.1:1/history" in message
    assert_no_secret(message, "the history error")
    assert history is None
    assert any(record.levelno == logging.WARNING for record in caplog.records)
    assert_no_secret(log_text(caplog), "the log")
    assert result.exit_code != 0
    assert "***" in result.stderr
    assert_no_secret(result.stdout + result.stderr, "trainctl history")


@pytest.mark.parametrize("value", [f"AWS_SECRET_ACCESS_KEY{SECRET_ACCESS_KEY}", f"AWS-KEY={SECRET_ACCESS_KEY}"])
def test_malformed_job_env_is_not_repeated(secret_env: dict[str, str], value: str) -> None:
    result = CliRunner().invoke(
        cli, ["submit", "some-cluster", "--env", value, "--", "python", "-c", "pass"], env=secret_env
    )

    assert result.exit_code == 3, result.output
    assert "--env" in result.stderr
    assert_no_secret(result.stdout + result.stderr, "trainctl submit --env")


def test_history_password_not_in_dagster_snapshot(secret_env: dict[str, str]) -> None:
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster_shared.serdes import serialize_value

    from training_pipelines.defs.environment import build_resources

    definitions = dg.Definitions(resources=build_resources(secret_env))

    snapshot = serialize_value(RepositorySnap.from_def(definitions.get_repository_def()))

    assert_no_secret(snapshot, "the code location snapshot")


@dataclass
class SucceedingJobClient:
    """A Jobs API client whose job succeeds at once; it records what was submitted."""

    submitted: list[dict[str, Any]] = field(default_factory=list)

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None) -> str:
        self.submitted.append({"entrypoint": entrypoint, "runtime_env": runtime_env})
        return submission_id

    def get_job_status(self, job_id: str) -> JobStatus:
        return JobStatus.SUCCEEDED

    def get_job_logs(self, job_id: str) -> str:
        return "done\n"


def test_job_env_passed_by_value_unlogged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = SucceedingJobClient()

    run_job(
        client,  # type: ignore[arg-type]
        entrypoint="python train.py",
        submission_id="job-1",
        on_log_line=lambda line: None,
        env_vars={"AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY},
        sleep=lambda seconds: None,
    )

    # Limitation of the Jobs API: environment variables of a job travel by value in its runtime_env.
    assert client.submitted[0]["runtime_env"] == {"env_vars": {"AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}}
    assert "Submitted Ray job job-1" in log_text(caplog)
    assert_no_secret(log_text(caplog), "the log")


# ----- RBAC: the Role grants exactly what the platform calls -----

# kube-apiserver authorizes a WebSocket GET on these subresources as "get", and from
# Kubernetes 1.35 on also as "create" (feature gate AuthorizePodWebsocketUpgradeCreatePermission).
STREAMING_SUBRESOURCES = frozenset({"pods/exec", "pods/attach", "pods/portforward"})
# Watch windows of 1-5 s end after 1% of that.
WATCH_TIMEOUT_SCALE = 0.01
RUN_POD = "dagster-run-5f3c2a1e-x7k2p"
RUN_JOB = {"name": "dagster-run-5f3c2a1e", "uid": "0b6f3c1e-0000-4000-8000-000000000001"}


def required_permissions(request: RecordedRequest) -> set[tuple[str, str, str]]:
    """Return the (apiGroup, resource, verb) triples that kube-apiserver's RBAC authorizer checks for a request.

    The mapping follows kube-apiserver's request info rules: the path names the group, the
    resource and an optional subresource, and the method (with ``watch`` for GET) the verb.
    """
    parts = [part for part in request.path.split("/") if part]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = "/".join(rest[0:1] + rest[2:3])
    named = len(rest) > 1
    watch = (request.query.get("watch") or [""])[-1].lower() in ("true", "1")

    if request.method == "GET" and resource in STREAMING_SUBRESOURCES:
        return {(group, resource, "get"), (group, resource, "create")}
    if request.method == "GET" and named:
        verb = "get"
    elif request.method == "GET":
        verb = "watch" if watch else "list"
    elif request.method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[request.method]
    return {(group, resource, verb)}


def load_role() -> dict[str, Any]:
    roles = [document for document in yaml.safe_load_all(ROLE_FILE.read_text()) if document["kind"] == "Role"]
    assert len(roles) == 1
    return roles[0]


def granted_permissions(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


class _DashboardHandler(BaseHTTPRequestHandler):
    """The Ray dashboard's version endpoint, which the platform probes before it calls a cluster ready."""

    def do_GET(self) -> None:
        body = b'{"ray_version": "2.60.0"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class FakeOperator:
    """Plays KubeRay for the RayClusters the platform creates: a head pod, then a ready status on request."""

    def __init__(self, standin: KubeStandin, *, dashboard_port: int) -> None:
        self.store = standin.store
        self.dashboard_port = dashboard_port
        self.crash_head = False

    def on_change(self, event: WatchEvent) -> None:
        if event.resource != RAYCLUSTERS or event.type != "ADDED":
            return
        name = event.object["metadata"]["name"]
        head = f"{name}-head"
        running = {"running": {"startedAt": "2026-12-04T10:00:00Z"}}
        crashing = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
        self.store.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": head,
                    "namespace": NAMESPACE,
                    "labels": {"ray.io/cluster": name, "ray.io/node-type": "head"},
                },
                "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0-py311-cpu"}]},
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [
                        {
                            "name": "ray-head",
                            "image": "rayproject/ray:2.60.0-py311-cpu",
                            "imageID": "",
                            "ready": False,
                            "restartCount": 3 if self.crash_head else 0,
                            "state": crashing if self.crash_head else running,
                        }
                    ],
                },
            }
        )
        self.store.set_pod_log(NAMESPACE, head, "RuntimeError: head crashed\n")
        self.store.update_status(RAYCLUSTERS, NAMESPACE, name, {"state": ""})

    def mark_ready(self, name: str) -> None:
        status = {
            "state": "ready",
            "conditions": [{"type": "HeadPodReady", "status": "True"}],
            "head": {"serviceIP": "127.0.0.1"},
            "endpoints": {"dashboard": str(self.dashboard_port)},
        }
        self.store.update_status(RAYCLUSTERS, NAMESPACE, name, status)


@dataclass
class Lifecycle:
    """What one lifecycle of the platform's Kubernetes calls left behind."""

    requests: list[RecordedRequest]
    logs: list[str]
    outputs: dict[str, str]


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_lifecycle(standin: KubeStandin, operator: FakeOperator, env: dict[str, str]) -> dict[str, str]:
    """Start, inspect and delete RayClusters as runs, trainctl and the orphan sensor do; return their outputs."""
    outputs: dict[str, str] = {}
    # Only trainctl forwards a port to the dashboard; a run in the cluster reaches it directly.
    cli_env = {**env, "KUBERAY_PORT_FORWARD": "true"}

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--backend", "kuberay"], env=cli_env, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result.stdout + result.stderr

    # A Dagster run in a pod of its Job: find the Job, create the cluster and wait for it. The
    # cluster becomes ready after the wait's first report, so the wait also watches the RayCluster.
    resource = RayClusterResource.from_env(env)
    progress: list[str] = []

    def on_progress(message: str) -> None:
        name = resource.run_context().cluster_name
        first_report = not any(line.startswith(f"RayCluster {name}: ") for line in progress)
        progress.append(message)
        if first_report and message.startswith(f"RayCluster {name}: "):
            operator.mark_ready(name)

    resource.ensure_started(on_progress=on_progress)
    name = resource.info.name
    outputs["progress"] = "\n".join(progress)

    # trainctl reads the cluster while it runs: the list, its events, pods and the dashboard through a port-forward.
    outputs["list"] = invoke("list")
    outputs["status"] = invoke("status", name, "-o", "json")
    resource.stop()

    # A run whose head crash-loops: the wait reads the head's log, then deletes the cluster.
    operator.crash_head = True
    failing = RayClusterResource.from_env(env)
    with pytest.raises(ClusterStartError) as caught:
        failing.ensure_started()
    outputs["start error"] = str(caught.value)
    assert "RuntimeError: head crashed" in outputs["start error"]

    # Clusters made by hand: trainctl down deletes one, the orphan sensor the expired one.
    now = dt.datetime.now(dt.UTC)
    for cluster, created in (("ray-alice-down", now), ("ray-alice-expired", now - dt.timedelta(hours=3))):
        context = make_context(run_id=f"request-{cluster}", origin="manual", name=cluster, owner="alice")
        manifest = render_raycluster(request=ClusterRequest(ttl_minutes=60), context=context, policy=load_policy())
        manifest["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        standin.store.put(manifest)
    outputs["down"] = invoke("down", "ray-alice-down")
    resource = RayClusterResource.from_env(env)
    with (
        dg.DagsterInstance.ephemeral() as instance,
        dg.build_sensor_context(instance=instance, resources={"ray_cluster": resource}) as context,
    ):
        outputs["sensor"] = str(orphaned_ray_clusters_sensor(context).skip_message)

    assert standin.store.objects(RAYCLUSTERS) == []
    return outputs


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    namespace_file = tmp_path_factory.mktemp("serviceaccount") / "namespace"
    namespace_file.write_text(NAMESPACE)
    dashboard = ThreadingHTTPServer(("127.0.0.1", 0), _DashboardHandler)
    threading.Thread(target=dashboard.serve_forever, daemon=True).start()
    handler = _ListHandler()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    try:
        with KubeStandin(watch_timeout_scale=WATCH_TIMEOUT_SCALE) as standin, pytest.MonkeyPatch.context() as patch:
            operator = FakeOperator(standin, dashboard_port=dashboard.server_address[1])
            standin.store.subscribe(operator.on_change)
            standin.store.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": RUN_POD,
                        "namespace": NAMESPACE,
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", **RUN_JOB}],
                    },
                    "spec": {"containers": [{"name": "dagster", "image": "training-pipelines:1"}]},
                }
            )
            # The run pod's view: in a cluster, with its own name and the service account's namespace.
            patch.setattr(backend_module, "SERVICE_ACCOUNT_NAMESPACE_FILE", namespace_file)
            patch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            patch.setenv("HOSTNAME", RUN_POD)
            for key, value in SECRET_ENV.items():
                patch.setenv(key, value)
            env = {
                **os.environ,
                "RAY_BACKEND": "kuberay",
                "KUBERAY_NAMESPACE": NAMESPACE,
                "KUBE_API_URL": standin.url,
                "KUBERAY_DASHBOARD_URL_TEMPLATE": "http://{service_ip}:{dashboard_port}",
            }
            outputs = run_lifecycle(standin, operator, env)
            created = standin.calls(verb="create", plural="rayclusters")
            assert created[0].body["metadata"]["ownerReferences"][0]["uid"] == RUN_JOB["uid"]
            yield Lifecycle(requests=standin.requests, logs=list(handler.messages), outputs=outputs)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        dashboard.shutdown()
        dashboard.server_close()


def test_lifecycle_stays_in_role_namespace(lifecycle: Lifecycle) -> None:
    prefixes = (f"/api/v1/namespaces/{NAMESPACE}/", f"/apis/ray.io/v1/namespaces/{NAMESPACE}/")

    assert load_role()["metadata"]["namespace"] == NAMESPACE
    for request in lifecycle.requests:
        assert request.path.startswith(prefixes), f"{request.method} {request.path}"


# Every call of the lifecycle, and the code that makes it.
EXPECTED_PERMISSIONS = {
    ("ray.io", "rayclusters", "create"),  # a run's cluster
    ("ray.io", "rayclusters", "get"),  # adoption, the wait, trainctl status and down
    ("ray.io", "rayclusters", "watch"),  # the wait between reads
    ("ray.io", "rayclusters", "list"),  # trainctl list, the orphan sensor
    ("ray.io", "rayclusters", "delete"),  # the end of a run, trainctl down, the orphan sensor
    ("", "pods", "get"),  # the run's own pod, to name its Job as the cluster's owner
    ("", "pods", "list"),  # the wait, trainctl status
    ("", "pods/log", "get"),  # the log tail of a crash-looping head
    ("", "events", "list"),  # trainctl status
    ("", "pods/portforward", "get"),  # KUBERAY_PORT_FORWARD=true: the WebSocket GET
    ("", "pods/portforward", "create"),  # the same GET, on Kubernetes 1.35 and later
}


def used_permissions(lifecycle: Lifecycle) -> set[tuple[str, str, str]]:
    return {permission for request in lifecycle.requests for permission in required_permissions(request)}


def test_lifecycle_makes_every_call(lifecycle: Lifecycle) -> None:
    assert used_permissions(lifecycle) == EXPECTED_PERMISSIONS


def test_role_allows_every_request(lifecycle: Lifecycle) -> None:
    granted = granted_permissions(load_role())

    for request in lifecycle.requests:
        missing = sorted(required_permissions(request) - granted)
        assert missing == [], f"{request.method} {request.path} needs {missing}"


def test_role_grants_only_used_permissions(lifecycle: Lifecycle) -> None:
    unused = granted_permissions(load_role()) - used_permissions(lifecycle)

    assert sorted(unused) == []


def test_role_names_no_wildcard() -> None:
    for rule in load_role()["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule


def test_lifecycle_sends_and_logs_no_secret(lifecycle: Lifecycle) -> None:
    assert lifecycle.logs
    for request in lifecycle.requests:
        sent = request.path + json.dumps(request.query) + json.dumps(request.body)
        assert_no_secret(sent, f"{request.method} {request.path}")
    assert_no_secret("\n".join(lifecycle.logs), "the log")
    for name, output in lifecycle.outputs.items():
        assert_no_secret(output, name)
