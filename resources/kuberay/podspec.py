"""Policy enforcement on one pod template of a RayCluster, and on the autoscaler sidecar's options.

The security settings meet the Kubernetes "restricted" Pod Security Standard
(https://kubernetes.io/docs/concepts/security/pod-security-standards/). Containers get
no privilege escalation, a non-root user, the RuntimeDefault (or a Localhost) seccomp
profile, and all capabilities dropped, with only NET_BIND_SERVICE allowed back. Pods get
no host namespaces, no host ports and only the volume types that standard allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from resources.errors import InvalidRequestError
from resources.kuberay.quantity import format_bytes, parse_quantity

if TYPE_CHECKING:
    from resources.kuberay.policy import Policy

GPU_RESOURCE = "nvidia.com/gpu"
# Annotation on a group's pod template naming the GPU type its pods need; the renderer sets it.
GPU_TYPE_ANNOTATION = "training-pipelines/gpu-type"
SHM_VOLUME_NAME = "shared-mem"
SHM_MOUNT_PATH = "/dev/shm"
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
HOST_NAMESPACE_FIELDS = ("hostNetwork", "hostPID", "hostIPC")
ALLOWED_ADDED_CAPABILITIES = ("NET_BIND_SERVICE",)
_CONTAINER_LISTS = ("containers", "initContainers")


def restricted_container_security_context(existing: Mapping[str, Any] | None, *, policy: Policy) -> dict[str, Any]:
    """Return ``existing`` with every field the restricted standard checks on a container set to a passing value."""
    context = dict(existing or {})
    context["allowPrivilegeEscalation"] = False
    context["privileged"] = False
    context["runAsNonRoot"] = True
    context["runAsUser"] = policy.run_as_user
    context["runAsGroup"] = policy.run_as_group
    context.pop("procMount", None)

    added = (context.get("capabilities") or {}).get("add") or []
    kept = [capability for capability in added if capability in ALLOWED_ADDED_CAPABILITIES]
    context["capabilities"] = {"drop": ["ALL"], "add": kept} if kept else {"drop": ["ALL"]}

    if (context.get("seccompProfile") or {}).get("type") != "Localhost":
        context["seccompProfile"] = {"type": "RuntimeDefault"}
    return context


def _restricted_pod_security_context(existing: Mapping[str, Any] | None, *, policy: Policy) -> dict[str, Any]:
    context = dict(existing or {})
    context["runAsNonRoot"] = True
    context["runAsUser"] = policy.run_as_user
    context["runAsGroup"] = policy.run_as_group
    # Volumes such as a PersistentVolumeClaim become writable for the container's group.
    context.setdefault("fsGroup", policy.run_as_group)
    if (context.get("seccompProfile") or {}).get("type") != "Localhost":
        context["seccompProfile"] = {"type": "RuntimeDefault"}
    return context


def _quantity(value: object, *, field: str) -> Decimal:
    try:
        return parse_quantity(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(
            field, f"{value!r} is not a Kubernetes quantity", "Use a value such as '2' or '4Gi'."
        ) from err


def _equalize_resources(container: dict[str, Any], *, path: str) -> None:
    """Set requests equal to limits for every resource, taking the larger value where both are set."""
    resources = container.setdefault("resources", {})
    limits = resources.setdefault("limits", {})
    requests = resources.setdefault("requests", {})
    for name in ("cpu", "memory"):
        if name not in limits and name not in requests:
            raise InvalidRequestError(
                f"{path}.resources.limits.{name}",
                f"the container sets no {name}",
                f"Set a {name} limit in the template so the pod gets a fixed amount.",
            )

    for name in sorted(set(limits) | set(requests)):
        candidates = [value for value in (limits.get(name), requests.get(name)) if value is not None]
        chosen = max(candidates, key=lambda value: _quantity(value, field=f"{path}.resources.limits.{name}"))
        # A CRD's int-or-string fields take strings or integers, never floats.
        text = chosen if isinstance(chosen, str) else str(chosen)
        limits[name] = text
        requests[name] = text


def _check_volumes(pod_spec: Mapping[str, Any], *, path: str) -> None:
    for index, volume in enumerate(pod_spec.get("volumes") or []):
        types = set(volume) - {"name"}
        disallowed = sorted(types - RESTRICTED_VOLUME_TYPES)
        if disallowed:
            raise InvalidRequestError(
                f"{path}.spec.volumes[{index}]",
                f"volume type {disallowed[0]!r} is not allowed by the restricted Pod Security Standard",
                f"Use one of {sorted(RESTRICTED_VOLUME_TYPES)}.",
            )


def _check_host_ports(container: Mapping[str, Any], *, path: str) -> None:
    # The baseline standard, which the restricted one includes, allows only an unset or zero hostPort.
    for index, port in enumerate(container.get("ports") or []):
        if port.get("hostPort"):
            raise InvalidRequestError(
                f"{path}.ports[{index}].hostPort",
                f"host port {port['hostPort']} is not allowed by the restricted Pod Security Standard",
                "Remove hostPort; the RayCluster's head Service reaches the ports inside the cluster.",
            )


def _enforce_shm(pod_spec: dict[str, Any], *, ray_container: dict[str, Any], policy: Policy) -> None:
    memory = int(parse_quantity(ray_container["resources"]["limits"]["memory"]))
    size = format_bytes(policy.shm_size(memory))
    mounts = ray_container.setdefault("volumeMounts", [])
    mount = next((item for item in mounts if item.get("mountPath") == SHM_MOUNT_PATH), None)
    if mount is None:
        mount = {"name": SHM_VOLUME_NAME, "mountPath": SHM_MOUNT_PATH}
        mounts.append(mount)

    volumes = pod_spec.setdefault("volumes", [])
    volumes[:] = [volume for volume in volumes if volume.get("name") != mount["name"]]
    volumes.append({"name": mount["name"], "emptyDir": {"medium": "Memory", "sizeLimit": size}})


def _enforce_gpu_scheduling(template: dict[str, Any], *, path: str, policy: Policy) -> None:
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    gpu_type = policy.gpu_type(
        annotations.get(GPU_TYPE_ANNOTATION), field=f"{path}.metadata.annotations.{GPU_TYPE_ANNOTATION}"
    )
    pod_spec = template["spec"]
    pod_spec.setdefault("nodeSelector", {}).update(gpu_type.node_selector)
    tolerations = pod_spec.setdefault("tolerations", [])
    for toleration in gpu_type.tolerations:
        if dict(toleration) not in tolerations:
            tolerations.append(dict(toleration))


def _memory_bytes(container: Mapping[str, Any]) -> int:
    return int(parse_quantity(container["resources"]["limits"]["memory"]))


def enforce_pod_template(
    template: dict[str, Any], *, path: str, policy: Policy, mount_service_account_token: bool
) -> int:
    """Enforce the policy on one pod template in place and return the GPUs one such pod uses.

    Raises:
        InvalidRequestError: a violation enforcement cannot fix, naming the field under ``path``.
    """
    pod_spec = template.setdefault("spec", {})
    containers = pod_spec.get("containers") or []
    if not containers:
        raise InvalidRequestError(f"{path}.spec.containers", "the pod has no container", "Fix the template.")
    for field in HOST_NAMESPACE_FIELDS:
        if pod_spec.get(field) is True:
            raise InvalidRequestError(
                f"{path}.spec.{field}", "host namespaces are not allowed", f"Remove {field} from the template."
            )
    _check_volumes(pod_spec, path=path)

    priority_class = pod_spec.get("priorityClassName")
    if priority_class is not None and priority_class not in policy.allowed_priority_classes:
        raise InvalidRequestError(
            f"{path}.spec.priorityClassName",
            f"priority class {priority_class!r} is not allowed",
            f"Use one of {list(policy.allowed_priority_classes)} or leave it unset.",
        )
    pod_spec["priorityClassName"] = priority_class or policy.priority_class_name
    pod_spec["automountServiceAccountToken"] = mount_service_account_token
    pod_spec["securityContext"] = _restricted_pod_security_context(pod_spec.get("securityContext"), policy=policy)

    for list_name in _CONTAINER_LISTS:
        for index, container in enumerate(pod_spec.get(list_name) or []):
            container_path = f"{path}.spec.{list_name}[{index}]"
            policy.check_image(container.get("image"), field=f"{container_path}.image")
            _check_host_ports(container, path=container_path)
            container["securityContext"] = restricted_container_security_context(
                container.get("securityContext"), policy=policy
            )
            _equalize_resources(container, path=container_path)

    # KubeRay runs Ray in the first container; /dev/shm belongs to it.
    _enforce_shm(pod_spec, ray_container=containers[0], policy=policy)

    init_memory = max((_memory_bytes(item) for item in pod_spec.get("initContainers") or []), default=0)
    pod_memory = max(init_memory, sum(_memory_bytes(item) for item in containers))
    if pod_memory > policy.max_memory_per_pod:
        raise InvalidRequestError(
            f"{path}.spec.containers[*].resources.limits.memory",
            f"the pod needs {format_bytes(pod_memory)} of memory, above the policy maximum of "
            f"{format_bytes(policy.max_memory_per_pod)}",
            "Lower memory_per_worker or head_memory, or use more workers with less memory each.",
        )

    gpu_amounts = [
        _quantity(item["resources"]["limits"].get(GPU_RESOURCE, 0), field=f"{path}.spec.containers[*]")
        for item in containers
    ]
    gpus = sum(gpu_amounts, Decimal(0))
    if gpus != gpus.to_integral_value():
        raise InvalidRequestError(
            f"{path}.spec.containers[*].resources.limits.{GPU_RESOURCE}",
            f"{gpus} is not a whole number",
            "Ask for whole GPUs.",
        )
    if gpus > 0:
        _enforce_gpu_scheduling(template, path=path, policy=policy)
    return int(gpus)


def enforce_autoscaler(options: dict[str, Any], *, policy: Policy) -> None:
    """Give the autoscaler sidecar the policy's fixed resources and a restricted security context, in place."""
    if "image" in options:
        policy.check_image(options["image"], field="spec.autoscalerOptions.image")
    amounts = {"cpu": policy.autoscaler_cpu, "memory": policy.autoscaler_memory}
    options["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
    options["securityContext"] = restricted_container_security_context(options.get("securityContext"), policy=policy)
