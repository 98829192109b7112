"""Unit tests of RayCluster rendering: every template at edge values, run metadata, and request validation."""

import copy
from typing import Any

import pytest
import yaml

from resources.errors import InvalidRequestError
from resources.kuberay import manifest as manifest_module
from resources.kuberay.manifest import (
    DEFAULT_IMAGES,
    OMIT,
    TEMPLATES,
    ClusterRequest,
    OwnerJob,
    RunContext,
    fill_placeholders,
    manifest_to_yaml,
    render_raycluster,
)
from resources.kuberay.naming import MAX_CLUSTER_NAME_LENGTH, is_dns1035_label, is_label_value
from resources.kuberay.podspec import GPU_TYPE_ANNOTATION
from resources.kuberay.policy import Policy, load_policy
from resources.kuberay.schema import validate_manifest

GIB = 1024**3


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


def make_context(**overrides: Any) -> RunContext:
    fields: dict[str, Any] = {
        "run_id": "5f3c2a1e-8b7d-4c6e-9f0a-1b2c3d4e5f60",
        "job_name": "daily_retrain_job",
        "namespace": "ml-training",
        "code_location": "training_pipelines",
        "owner": "ranking-team@example.com",
        "run_url": "https://dagster.example.com/runs/5f3c2a1e-8b7d-4c6e-9f0a-1b2c3d4e5f60",
        "partition": "1998-03-15",
        "asset": "ranking_model",
    }
    fields.update(overrides)
    return RunContext(**fields)


def render(policy: Policy, *, context: RunContext | None = None, **request_fields: Any) -> dict[str, Any]:
    return render_raycluster(request=ClusterRequest(**request_fields), context=context or make_context(), policy=policy)


def worker_group(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["workerGroupSpecs"][0]


def worker_container(manifest: dict[str, Any]) -> dict[str, Any]:
    return worker_group(manifest)["template"]["spec"]["containers"][0]


def edge_requests(policy: Policy) -> list[dict[str, Any]]:
    return [
        {"template": "cpu", "workers": 1},
        {"template": "cpu", "workers": policy.max_workers},
        {"template": "cpu", "workers": 1, "min_workers": 0, "max_workers": policy.max_workers},
        {"template": "cpu", "workers": 2, "min_workers": 1, "max_workers": 4, "head_cpus": 0},
        {"template": "gpu", "workers": 1, "gpus_per_worker": 1, "gpu_type": "l4"},
        {"template": "gpu", "workers": 1, "gpus_per_worker": policy.max_gpus_per_cluster, "gpu_type": "h200"},
        {"template": "gpu", "workers": 2, "gpus_per_worker": policy.max_gpus_per_cluster // 2, "gpu_type": "a100"},
        {"template": "gpu", "workers": 1, "max_workers": 2, "gpus_per_worker": 1, "gpu_type": "t4"},
        {"template": "cpu", "workers": 1, "memory_per_worker": 200 * GIB, "cpus_per_worker": 64},
        {"template": "cpu", "workers": 1, "team": "Ranking & Recommendations / EU " * 5, "ttl_minutes": 72 * 60},
    ]


def edge_contexts() -> list[RunContext]:
    return [
        make_context(),
        make_context(run_id="0123456789abcdef"),
        make_context(run_id="R" * 300, job_name="j" * 100, asset="ranking/" * 20, partition=None),
        make_context(owner_job=OwnerJob(name="dagster-run-5f3c2a1e", uid="0b6f3c1e-0000-4000-8000-000000000001")),
    ]


def test_every_template_renders_valid(policy: Policy) -> None:
    for template in TEMPLATES:
        gpus = {"gpus_per_worker": 1, "gpu_type": "l4"} if template == "gpu" else {}
        manifest = render(policy, template=template, **gpus)
        assert validate_manifest(manifest) == [], template


def test_edge_requests_render_valid(policy: Policy) -> None:
    for request_fields in edge_requests(policy):
        for context in edge_contexts():
            manifest = render(policy, context=context, **request_fields)
            assert validate_manifest(manifest) == [], (request_fields, context.run_id)


def test_rendered_name_is_valid_for_long_run_id(policy: Policy) -> None:
    manifest = render(policy, context=make_context(run_id="0" + "x" * 300))
    name = manifest["metadata"]["name"]
    assert is_dns1035_label(name)
    assert len(name) <= MAX_CLUSTER_NAME_LENGTH


def test_rendered_labels_identify_the_run(policy: Policy) -> None:
    context = make_context()
    labels = render(policy, context=context, team="ranking")["metadata"]["labels"]
    assert labels["dagster/run-id"] == context.run_id
    assert labels["dagster/job"] == "daily_retrain_job"
    assert labels["dagster/partition"] == "1998-03-15"
    assert labels["dagster/asset"] == "ranking_model"
    assert labels["dagster/code-location"] == "training_pipelines"
    assert labels["training-pipelines/team"] == "ranking"
    assert labels["app.kubernetes.io/managed-by"] == "training-pipelines"


def test_rendered_labels_valid_for_illegal_values(policy: Policy) -> None:
    context = make_context(run_id="run/" + "9" * 100, asset="ranking model/v2")
    labels = render(policy, context=context, team="Ranking & Recs!")["metadata"]["labels"]
    for key, value in labels.items():
        assert is_label_value(value), (key, value)


def test_pod_templates_carry_run_labels(policy: Policy) -> None:
    manifest = render(policy)
    run_id = manifest["metadata"]["labels"]["dagster/run-id"]
    assert manifest["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]["dagster/run-id"] == run_id
    assert worker_group(manifest)["template"]["metadata"]["labels"]["dagster/run-id"] == run_id


def test_rendered_annotations_keep_full_values(policy: Policy) -> None:
    context = make_context(run_id="r" * 100)
    annotations = render(policy, context=context)["metadata"]["annotations"]
    assert annotations["training-pipelines/owner"] == "ranking-team@example.com"
    assert annotations["training-pipelines/run-url"] == context.run_url
    assert annotations["dagster/run-id"] == "r" * 100
    assert annotations["training-pipelines/ttl-minutes"] == "480"


def test_manual_cluster_has_no_dagster_labels(policy: Policy) -> None:
    context = make_context(origin="manual", run_id="3f2a", name="alice-experiment", partition=None)
    manifest = render(policy, context=context)
    labels = manifest["metadata"]["labels"]
    assert manifest["metadata"]["name"] == "alice-experiment"
    assert labels["training-pipelines/origin"] == "manual"
    assert labels["training-pipelines/request-id"] == "3f2a"
    assert not [key for key in labels if key.startswith("dagster/")]
    assert context.owner_labels == {"training-pipelines/request-id": "3f2a"}
    assert "training-pipelines/run-url" not in manifest["metadata"]["annotations"]


@pytest.mark.parametrize("name", ["Alice", "1cluster", "a" * 54, "under_score", ""])
def test_invalid_cluster_name_rejected(policy: Policy, name: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        render(policy, context=make_context(origin="manual", name=name or None, run_id=""))
    assert caught.value.field in ("name", "run_id")


def test_partition_label_omitted_when_none(policy: Policy) -> None:
    labels = render(policy, context=make_context(partition=None))["metadata"]["labels"]
    assert "dagster/partition" not in labels


def test_owner_reference_to_job(policy: Policy) -> None:
    context = make_context(owner_job=OwnerJob(name="dagster-run-abc", uid="uid-1"))
    references = render(policy, context=context)["metadata"]["ownerReferences"]
    assert references == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "dagster-run-abc",
            "uid": "uid-1",
            "controller": False,
            "blockOwnerDeletion": False,
        }
    ]


def test_no_owner_reference_without_job(policy: Policy) -> None:
    assert "ownerReferences" not in render(policy)["metadata"]


def test_namespace_from_context(policy: Policy) -> None:
    assert render(policy)["metadata"]["namespace"] == "ml-training"


def test_fixed_size_disables_autoscaling(policy: Policy) -> None:
    manifest = render(policy, workers=3)
    assert manifest["spec"]["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in manifest["spec"]
    assert worker_group(manifest)["minReplicas"] == 3
    assert worker_group(manifest)["maxReplicas"] == 3


def test_min_max_enables_autoscaling(policy: Policy) -> None:
    manifest = render(policy, workers=2, min_workers=1, max_workers=5)
    assert manifest["spec"]["enableInTreeAutoscaling"] is True
    assert worker_group(manifest)["replicas"] == 2
    assert worker_group(manifest)["minReplicas"] == 1
    assert worker_group(manifest)["maxReplicas"] == 5
    assert manifest["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] == 60


def test_ray_start_params_for_ray(policy: Policy) -> None:
    manifest = render(policy, cpus_per_worker=4, head_cpus=2)
    head_params = manifest["spec"]["headGroupSpec"]["rayStartParams"]
    assert head_params["dashboard-host"] == "0.0.0.0"
    assert head_params["num-cpus"] == "2"
    assert worker_group(manifest)["rayStartParams"]["num-cpus"] == "4"


def test_head_without_ray_cpus_keeps_container_cpu(policy: Policy) -> None:
    manifest = render(policy, head_cpus=0)
    head = manifest["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"


def test_worker_resources_from_request(policy: Policy) -> None:
    container = worker_container(render(policy, cpus_per_worker=3, memory_per_worker=6 * GIB))
    assert container["resources"]["limits"] == {"cpu": "3", "memory": "6Gi"}
    assert container["resources"]["requests"] == {"cpu": "3", "memory": "6Gi"}


def test_default_images_per_template(policy: Policy) -> None:
    assert worker_container(render(policy, template="cpu"))["image"] == DEFAULT_IMAGES["cpu"]
    gpu_manifest = render(policy, template="gpu", gpus_per_worker=1, gpu_type="l4")
    assert worker_container(gpu_manifest)["image"] == DEFAULT_IMAGES["gpu"]


def test_image_is_overridable(policy: Policy) -> None:
    image = "rayproject/ray:2.60.0-py311-cu124"
    manifest = render(policy, image=image)
    assert worker_container(manifest)["image"] == image
    assert manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == image


def test_gpu_workers_scheduled_on_type(policy: Policy) -> None:
    manifest = render(policy, template="gpu", gpus_per_worker=2, gpu_type="l4")
    group = worker_group(manifest)
    pod_spec = group["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert group["rayStartParams"]["num-gpus"] == "2"


def test_gpu_template_without_gpus_rejected(policy: Policy) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        render(policy, template="gpu")
    assert caught.value.field == "template"
    assert "template 'gpu' is used with 0 GPUs per worker" in str(caught.value)
    assert "or use template 'cpu'" in str(caught.value)


def test_gpu_template_annotation_matches_policy_key() -> None:
    template = manifest_module._load_template("gpu")
    annotations = template["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["annotations"]
    assert GPU_TYPE_ANNOTATION in annotations


def test_render_leaves_template_cache_unchanged(policy: Policy) -> None:
    before = copy.deepcopy(manifest_module._load_template("cpu"))
    render(policy, template="cpu", workers=3)
    assert manifest_module._load_template("cpu") == before


def test_render_is_deterministic(policy: Policy) -> None:
    assert render(policy, workers=3) == render(policy, workers=3)


def test_manifest_to_yaml_round_trips(policy: Policy) -> None:
    manifest = render(policy, template="gpu", gpus_per_worker=1, gpu_type="a10g")
    text = manifest_to_yaml(manifest)
    assert yaml.safe_load(text) == manifest
    assert text.startswith("apiVersion: ray.io/v1\nkind: RayCluster\n")


def rejected_field(policy: Policy, **request_fields: Any) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        render(policy, **request_fields)
    return caught.value.field


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"template": "tpu"}, "template"),
        ({"workers": 0}, "workers"),
        ({"workers": True}, "workers"),
        ({"workers": 3, "max_workers": 2}, "workers"),
        ({"workers": 1, "min_workers": 2, "max_workers": 4}, "workers"),
        ({"min_workers": -1}, "min_workers"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
        ({"memory_per_worker": 0}, "memory_per_worker"),
        ({"memory_per_worker": "2Gi"}, "memory_per_worker"),
        ({"head_memory": -1}, "head_memory"),
        ({"head_cpus": -1}, "head_cpus"),
        ({"gpus_per_worker": -1}, "gpus_per_worker"),
        ({"gpus_per_worker": 1, "gpu_type": "t4"}, "template"),
        ({"template": "gpu", "gpus_per_worker": 1}, "gpu_type"),
        ({"template": "gpu", "gpu_type": "t4"}, "template"),
        ({"template": "cpu", "gpu_type": "t4"}, "gpu_type"),
        ({"image": ""}, "image"),
        ({"ttl_minutes": 0}, "ttl"),
        ({"ttl_minutes": -60}, "ttl"),
        ({"ttl_minutes": 72 * 60 + 1}, "ttl"),
    ],
)
def test_invalid_request_names_field(policy: Policy, request_fields: dict[str, Any], field: str) -> None:
    assert rejected_field(policy, **request_fields) == field


def test_policy_violation_stops_render(policy: Policy) -> None:
    field = rejected_field(policy, template="gpu", gpus_per_worker=1, gpu_type="v100")
    assert field.endswith(GPU_TYPE_ANNOTATION)


def test_disallowed_image_stops_render(policy: Policy) -> None:
    field = rejected_field(policy, image="docker.io/library/python:3.11")
    assert field == "spec.headGroupSpec.template.spec.containers[0].image"


def test_too_many_workers_stops_render(policy: Policy) -> None:
    assert rejected_field(policy, workers=policy.max_workers + 1) == "spec.workerGroupSpecs[*].maxReplicas"


def test_too_much_memory_stops_render(policy: Policy) -> None:
    field = rejected_field(policy, memory_per_worker=policy.max_memory_per_pod + GIB)
    assert field == "spec.workerGroupSpecs[0].template.spec.containers[*].resources.limits.memory"


def test_too_many_gpus_stops_render(policy: Policy) -> None:
    field = rejected_field(
        policy, template="gpu", workers=2, gpus_per_worker=policy.max_gpus_per_cluster, gpu_type="h100"
    )
    assert field.endswith("nvidia.com/gpu")


def test_invalid_namespace_stops_render(policy: Policy) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        render(policy, context=make_context(namespace="ML Training"))
    assert caught.value.field == "namespace"


def test_empty_run_id_stops_render(policy: Policy) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        render(policy, context=make_context(run_id=""))
    assert caught.value.field == "run_id"


def test_owner_job_without_uid_stops_render(policy: Policy) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        render(policy, context=make_context(owner_job=OwnerJob(name="run", uid="")))
    assert caught.value.field == "owner_job"


def test_broken_template_stops_render(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = copy.deepcopy(manifest_module._load_template("cpu"))
    broken["spec"]["workerGroupSpecs"][0]["replica"] = 1
    monkeypatch.setattr(manifest_module, "_load_template", lambda name: broken)
    with pytest.raises(InvalidRequestError) as caught:
        render(policy)
    assert caught.value.field == "spec.workerGroupSpecs[0].replica"
    assert "bug in template 'cpu'" in caught.value.fix


def test_unfilled_placeholder_stops_render(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = copy.deepcopy(manifest_module._load_template("cpu"))
    broken["spec"]["rayVersion"] = "${RAY_RELEASE}"
    monkeypatch.setattr(manifest_module, "_load_template", lambda name: broken)
    with pytest.raises(InvalidRequestError) as caught:
        render(policy)
    assert caught.value.field == "template"
    assert "spec.rayVersion" in caught.value.problem


def test_fill_placeholders_keeps_value_types() -> None:
    filled = fill_placeholders(
        {"a": "${N}", "b": ["${M}", "text"], "c": "${GONE}"}, {"N": 3, "M": {"k": "v"}, "GONE": OMIT}
    )
    assert filled == {"a": 3, "b": [{"k": "v"}, "text"]}
