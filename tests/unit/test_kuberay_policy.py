"""Unit tests of the Ray cluster policy: loading, enforcement on any template, and the violations it rejects."""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resources.errors import InvalidRequestError
from resources.kuberay.podspec import GPU_TYPE_ANNOTATION
from resources.kuberay.policy import Policy, apply_policy, load_policy

GIB = 1024**3
MIB = 1024**2


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def container(name: str, *, cpu: str = "2", memory: str = "8Gi", gpus: int = 0) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {"name": name, "image": "rayproject/ray:2.60.0-py311-cpu", "resources": {"limits": limits}}


def raw_cluster(*, workers: int = 2, gpus: int = 0, gpu_type: str | None = None) -> dict[str, Any]:
    """A RayCluster as a careless template might write it: no security settings at all."""
    worker_metadata: dict[str, Any] = {"annotations": {GPU_TYPE_ANNOTATION: gpu_type}} if gpu_type else {}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "ray-policy-test"},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {"spec": {"containers": [container("ray-head", memory="4Gi")]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": {
                        "metadata": worker_metadata,
                        "spec": {"containers": [container("ray-worker", gpus=gpus)]},
                    },
                }
            ],
        },
    }


def pod_specs(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield manifest["spec"]["headGroupSpec"]["template"]["spec"]
    for group in manifest["spec"]["workerGroupSpecs"]:
        yield group["template"]["spec"]


def all_containers(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for pod_spec in pod_specs(manifest):
        yield from pod_spec.get("containers", [])
        yield from pod_spec.get("initContainers", [])


def worker_pod(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]


def test_default_policy_values(policy: Policy) -> None:
    assert policy.default_ttl_hours == 8
    assert policy.max_ttl_hours == 72
    assert policy.max_memory_per_pod == 256 * GIB
    assert policy.shm_max == 64 * GIB
    assert set(policy.gpu_types) == {"t4", "l4", "a10g", "a100", "h100", "h200"}


def test_default_gpu_types_tolerate_gpu_taint(policy: Policy) -> None:
    for name, gpu_type in policy.gpu_types.items():
        assert "nvidia.com/gpu.product" in gpu_type.node_selector, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_type.tolerations, name


def test_enforcement_sets_requests_equal_limits(policy: Policy) -> None:
    manifest = raw_cluster()
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["resources"]["requests"] = {"cpu": "500m", "memory": "6Gi"}
    head["initContainers"] = [container("init", cpu="100m", memory="64Mi")]
    result = apply_policy(manifest, policy)
    for item in all_containers(result):
        resources = item["resources"]
        assert resources["requests"]["cpu"] == resources["limits"]["cpu"], item["name"]
        assert resources["requests"]["memory"] == resources["limits"]["memory"], item["name"]


def test_enforcement_takes_larger_of_request_and_limit(policy: Policy) -> None:
    manifest = raw_cluster()
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["resources"]["requests"] = {"cpu": "3", "memory": "2Gi"}
    result = apply_policy(manifest, policy)
    resources = result["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["cpu"] == "3"
    assert resources["limits"]["memory"] == "4Gi"


def test_enforcement_sets_restricted_container_context(policy: Policy) -> None:
    manifest = raw_cluster()
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]
    head["initContainers"] = [container("init", cpu="100m", memory="64Mi")]
    head["containers"][0]["securityContext"] = {
        "runAsUser": 0,
        "privileged": True,
        "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"]},
    }
    result = apply_policy(manifest, policy)
    for item in all_containers(result):
        context = item["securityContext"]
        assert context["runAsNonRoot"] is True, item["name"]
        assert context["runAsUser"] == 1000, item["name"]
        assert context["allowPrivilegeEscalation"] is False, item["name"]
        assert context["privileged"] is False, item["name"]
        assert context["capabilities"]["drop"] == ["ALL"], item["name"]
        assert "SYS_ADMIN" not in context["capabilities"].get("add", []), item["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, item["name"]


def test_enforcement_sets_restricted_pod_context(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["securityContext"] = {"runAsUser": 0, "runAsNonRoot": False}
    result = apply_policy(manifest, policy)
    for pod_spec in pod_specs(result):
        context = pod_spec["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 1000
        assert context["runAsGroup"] == 100
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_enforcement_keeps_localhost_seccomp(policy: Policy) -> None:
    manifest = raw_cluster()
    profile = {"type": "Localhost", "localhostProfile": "profiles/ray.json"}
    worker_pod(manifest)["securityContext"] = {"seccompProfile": profile}
    result = apply_policy(manifest, policy)
    assert worker_pod(result)["securityContext"]["seccompProfile"] == profile


def test_enforcement_disables_token_without_autoscaling(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["automountServiceAccountToken"] = True
    result = apply_policy(manifest, policy)
    for pod_spec in pod_specs(result):
        assert pod_spec["automountServiceAccountToken"] is False


def test_autoscaling_head_keeps_token(policy: Policy) -> None:
    manifest = raw_cluster()
    manifest["spec"]["enableInTreeAutoscaling"] = True
    manifest["spec"]["workerGroupSpecs"][0].update(minReplicas=0, maxReplicas=4)
    result = apply_policy(manifest, policy)
    assert result["spec"]["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert worker_pod(result)["automountServiceAccountToken"] is False


def test_autoscaler_sidecar_gets_policy(policy: Policy) -> None:
    manifest = raw_cluster()
    manifest["spec"]["enableInTreeAutoscaling"] = True
    result = apply_policy(manifest, policy)
    options = result["spec"]["autoscalerOptions"]
    assert options["resources"]["requests"] == options["resources"]["limits"]
    assert options["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert options["securityContext"]["runAsNonRoot"] is True
    assert options["securityContext"]["allowPrivilegeEscalation"] is False
    assert options["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert options["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_enforcement_sets_priority_class(policy: Policy) -> None:
    result = apply_policy(raw_cluster(), policy)
    for pod_spec in pod_specs(result):
        assert pod_spec["priorityClassName"] == "training-batch"


def test_enforcement_adds_shm_volume(policy: Policy) -> None:
    result = apply_policy(raw_cluster(), policy)
    pod_spec = worker_pod(result)
    mounts = pod_spec["containers"][0]["volumeMounts"]
    mount = next(item for item in mounts if item["mountPath"] == "/dev/shm")
    volume = next(item for item in pod_spec["volumes"] if item["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    # 30% of the worker's 8Gi, in whole MiB.
    assert volume["emptyDir"]["sizeLimit"] == f"{int(8 * GIB * 0.3) // MIB}Mi"


def test_shm_size_is_capped(policy: Policy) -> None:
    assert policy.shm_size(250 * GIB) == 64 * GIB
    assert policy.shm_size(1 * GIB) == int(GIB * 0.3) // MIB * MIB


def test_enforcement_replaces_template_shm(policy: Policy) -> None:
    manifest = raw_cluster()
    pod_spec = worker_pod(manifest)
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    pod_spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    result = apply_policy(manifest, policy)
    volumes = worker_pod(result)["volumes"]
    assert len(volumes) == 1
    assert volumes[0]["name"] == "dshm"
    assert "sizeLimit" in volumes[0]["emptyDir"]


def test_gpu_type_sets_node_selector(policy: Policy) -> None:
    result = apply_policy(raw_cluster(gpus=1, gpu_type="h100"), policy)
    pod_spec = worker_pod(result)
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_gpu_requests_equal_limits(policy: Policy) -> None:
    result = apply_policy(raw_cluster(gpus=2, gpu_type="l4"), policy)
    resources = worker_pod(result)["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["nvidia.com/gpu"] == "2"


def test_cpu_pods_get_no_gpu_scheduling(policy: Policy) -> None:
    result = apply_policy(raw_cluster(), policy)
    for pod_spec in pod_specs(result):
        assert "nodeSelector" not in pod_spec
        assert "tolerations" not in pod_spec


def test_apply_policy_leaves_input_unchanged(policy: Policy) -> None:
    manifest = raw_cluster()
    before = copy.deepcopy(manifest)
    apply_policy(manifest, policy)
    assert manifest == before


def test_apply_policy_is_idempotent(policy: Policy) -> None:
    once = apply_policy(raw_cluster(gpus=1, gpu_type="t4"), policy)
    assert apply_policy(once, policy) == once


def violation(manifest: dict[str, Any], policy: Policy) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        apply_policy(manifest, policy)
    return caught.value


def test_image_outside_allow_list_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["containers"][0]["image"] = "evil.example.com/ray:2.60.0"
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.containers[0].image"
    assert "not from an allowed registry" in error.problem


def test_lookalike_registry_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["containers"][0]["image"] = "rayproject/ray-evil:2.60.0"
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.containers[0].image"


def test_latest_image_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["containers"][0]["image"] = "rayproject/ray:latest"
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.containers[0].image"
    assert "no fixed version" in error.problem


def test_init_container_image_checked(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["initContainers"] = [container("init") | {"image": "busybox:1.36"}]
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.initContainers[0].image"


def test_digest_image_accepted(policy: Policy) -> None:
    manifest = raw_cluster()
    image = "rayproject/ray@sha256:" + "a" * 64
    worker_pod(manifest)["containers"][0]["image"] = image
    assert worker_pod(apply_policy(manifest, policy))["containers"][0]["image"] == image


def test_tag_and_digest_image_accepted(policy: Policy) -> None:
    manifest = raw_cluster()
    image = "rayproject/ray:2.60.0-py311-cpu@sha256:" + "a" * 64
    worker_pod(manifest)["containers"][0]["image"] = image
    assert worker_pod(apply_policy(manifest, policy))["containers"][0]["image"] == image


def test_too_many_workers_rejected(policy: Policy) -> None:
    error = violation(raw_cluster(workers=policy.max_workers + 1), policy)
    assert error.field == "spec.workerGroupSpecs[*].maxReplicas"
    assert f"maximum of {policy.max_workers}" in error.problem


def test_autoscaling_max_counts_as_workers(policy: Policy) -> None:
    manifest = raw_cluster(workers=1)
    manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] = policy.max_workers + 1
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[*].maxReplicas"


def test_multi_host_groups_count_every_pod(policy: Policy) -> None:
    manifest = raw_cluster(workers=policy.max_workers // 2 + 1)
    manifest["spec"]["workerGroupSpecs"][0]["numOfHosts"] = 2
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[*].maxReplicas"


def test_too_many_gpus_rejected(policy: Policy) -> None:
    error = violation(raw_cluster(workers=3, gpus=8, gpu_type="a100"), policy)
    assert error.field.endswith("resources.limits.nvidia.com/gpu")
    assert "24 GPUs" in error.problem


def test_too_much_memory_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["containers"][0]["resources"]["limits"]["memory"] = "300Gi"
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.containers[*].resources.limits.memory"
    assert "300Gi" in error.problem


def test_unknown_gpu_type_rejected(policy: Policy) -> None:
    error = violation(raw_cluster(gpus=1, gpu_type="v100"), policy)
    assert error.field == f"spec.workerGroupSpecs[0].template.metadata.annotations.{GPU_TYPE_ANNOTATION}"
    assert "unknown GPU type 'v100'" in error.problem


def test_gpus_without_type_rejected(policy: Policy) -> None:
    error = violation(raw_cluster(gpus=1), policy)
    assert error.field == f"spec.workerGroupSpecs[0].template.metadata.annotations.{GPU_TYPE_ANNOTATION}"
    assert "without a GPU type" in error.problem


def test_fractional_gpus_rejected(policy: Policy) -> None:
    manifest = raw_cluster(gpu_type="t4")
    worker_pod(manifest)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "500m"
    error = violation(manifest, policy)
    assert error.field.endswith("nvidia.com/gpu")


def test_disallowed_priority_class_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["priorityClassName"] = "system-cluster-critical"
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.priorityClassName"


def test_host_network_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["hostNetwork"] = True
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.hostNetwork"


def test_host_path_volume_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    worker_pod(manifest)["volumes"] = [{"name": "data", "hostPath": {"path": "/data"}}]
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.volumes[0]"
    assert "hostPath" in error.problem


def test_container_without_memory_rejected(policy: Policy) -> None:
    manifest = raw_cluster()
    del worker_pod(manifest)["containers"][0]["resources"]["limits"]["memory"]
    error = violation(manifest, policy)
    assert error.field == "spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits.memory"


def test_ttl_defaults_and_caps(policy: Policy) -> None:
    assert policy.ttl_minutes(None) == 8 * 60
    assert policy.ttl_minutes(1) == 1
    assert policy.ttl_minutes(72 * 60) == 72 * 60
    for bad in (72 * 60 + 1, 0, -5):
        with pytest.raises(InvalidRequestError) as caught:
            policy.ttl_minutes(bad)
        assert caught.value.field == "ttl"
        assert "72h" in caught.value.fix


def write_policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_policy_file_overrides_defaults(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, "max_workers: 4\nmax_memory_per_pod: 16Gi\n"))
    assert policy.max_workers == 4
    assert policy.max_memory_per_pod == 16 * GIB
    assert policy.max_ttl_hours == 72


def test_policy_unknown_key_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        load_policy(write_policy(tmp_path, "max_worker: 4\n"))
    assert caught.value.field.endswith("max_worker")


def test_policy_open_prefix_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        load_policy(write_policy(tmp_path, "allowed_image_prefixes: [registry.example.com]\n"))
    assert caught.value.field.endswith("allowed_image_prefixes")


def test_policy_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        load_policy(str(tmp_path / "missing.yaml"))
    assert caught.value.field == "policy"


def test_policy_default_ttl_above_max_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        load_policy(write_policy(tmp_path, "default_ttl_hours: 100\n"))
    assert caught.value.field.endswith("default_ttl_hours")
