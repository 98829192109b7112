"""Unit tests of RayCluster and RayJob validation against the packaged KubeRay CRD schemas."""

import copy
from typing import Any

import pytest

from resources.kuberay.schema import format_path, kuberay_version, to_json_schema, validate_manifest


def minimal_raycluster() -> dict[str, Any]:
    container = {
        "name": "ray-head",
        "image": "rayproject/ray:2.60.0-py311-cpu",
        "resources": {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "1", "memory": "2Gi"}},
        "ports": [{"containerPort": 6379, "name": "gcs-server"}],
    }
    worker = copy.deepcopy(container) | {"name": "ray-worker"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "ray-test", "namespace": "ml", "labels": {"dagster/run-id": "abc"}},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0"},
                "template": {"spec": {"containers": [container]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": 1,
                    "minReplicas": 1,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [worker]}},
                }
            ],
        },
    }


def head_container(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def test_minimal_raycluster_is_valid() -> None:
    assert validate_manifest(minimal_raycluster()) == []


def test_stored_schema_version_is_known() -> None:
    assert kuberay_version() == "v1.7.0"


def test_negative_replicas_named_by_path() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = -1
    manifest["spec"]["workerGroupSpecs"][0]["minReplicas"] = 0
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].replicas: -1 is less than the minimum of 0"]


def test_replicas_above_max_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = 3
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].replicas: 3 is greater than maxReplicas 1"]


def test_min_above_max_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0].update(minReplicas=4, maxReplicas=2, replicas=3)
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].minReplicas: 4 is greater than maxReplicas 2"]


def test_wrong_type_named_by_path() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = "2"
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].replicas: '2' is not of type 'integer'"]


def test_float_is_not_an_integer() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 1.0
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].maxReplicas: 1.0 is not of type 'integer'"]


def test_bool_is_not_an_integer() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = True
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].replicas: True is not of type 'integer'"]


def test_unknown_field_named_by_path() -> None:
    manifest = minimal_raycluster()
    head_container(manifest)["cpuLimit"] = "2"
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("spec.headGroupSpec.template.spec.containers[0].cpuLimit: unknown field")


def test_unknown_top_level_spec_field() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroups"] = []
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("spec.workerGroups: unknown field")


def test_missing_required_field_named_by_path() -> None:
    manifest = minimal_raycluster()
    del manifest["spec"]["workerGroupSpecs"][0]["groupName"]
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].groupName: required field is missing"]


def test_missing_head_group_spec() -> None:
    manifest = minimal_raycluster()
    del manifest["spec"]["headGroupSpec"]
    assert validate_manifest(manifest) == ["spec.headGroupSpec: required field is missing"]


def test_missing_container_name() -> None:
    manifest = minimal_raycluster()
    del head_container(manifest)["name"]
    problems = validate_manifest(manifest)
    assert problems == ["spec.headGroupSpec.template.spec.containers[0].name: required field is missing"]


def test_int32_overflow_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2**31
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[0].maxReplicas: 2147483648 is not a valid int32"]


def test_int_or_string_accepts_both() -> None:
    manifest = minimal_raycluster()
    head_container(manifest)["resources"]["limits"]["cpu"] = 2
    head_container(manifest)["resources"]["requests"]["cpu"] = "2000m"
    assert validate_manifest(manifest) == []


def test_int_or_string_rejects_float() -> None:
    manifest = minimal_raycluster()
    head_container(manifest)["resources"]["limits"]["cpu"] = 1.5
    problems = validate_manifest(manifest)
    assert problems == [
        "spec.headGroupSpec.template.spec.containers[0].resources.limits.cpu: expected an integer or a string, got 1.5"
    ]


def test_quantity_pattern_rejected() -> None:
    manifest = minimal_raycluster()
    head_container(manifest)["resources"]["limits"]["memory"] = "2 GB"
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("spec.headGroupSpec.template.spec.containers[0].resources.limits.memory: '2 GB'")


def test_enum_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["autoscalerOptions"] = {"upscalingMode": "Sometimes"}
    problems = validate_manifest(manifest)
    assert problems == [
        "spec.autoscalerOptions.upscalingMode: 'Sometimes' is not one of ['Default', 'Aggressive', 'Conservative']"
    ]


def test_duplicate_list_map_key_rejected() -> None:
    manifest = minimal_raycluster()
    head_container(manifest)["ports"].append({"containerPort": 6379, "name": "again"})
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("spec.headGroupSpec.template.spec.containers[0].ports: duplicate item")


def test_null_rejected_where_not_nullable() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["rayVersion"] = None
    problems = validate_manifest(manifest)
    assert problems == ["spec.rayVersion: None is not of type 'string'"]


def test_wrong_api_version_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["apiVersion"] = "ray.io/v1alpha1"
    assert validate_manifest(manifest) == ["apiVersion: expected 'ray.io/v1', got 'ray.io/v1alpha1'"]


def test_unknown_kind_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["kind"] = "RayService"
    problems = validate_manifest(manifest)
    assert problems == ["kind: expected one of ['RayCluster', 'RayJob'], got 'RayService'"]


def test_missing_spec_rejected() -> None:
    manifest = minimal_raycluster()
    del manifest["spec"]
    assert validate_manifest(manifest) == ["spec: required field is missing"]


def test_non_mapping_manifest_rejected() -> None:
    assert validate_manifest([]) == ["(root): expected a mapping, got list"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Ray-Test", "not a valid RayCluster name"),
        ("1ray", "not a valid RayCluster name"),
        ("r" * 54, "not a valid RayCluster name"),
    ],
)
def test_invalid_cluster_name_rejected(name: str, reason: str) -> None:
    manifest = minimal_raycluster()
    manifest["metadata"]["name"] = name
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("metadata.name: ")
    assert reason in problems[0]


def test_missing_name_rejected() -> None:
    manifest = minimal_raycluster()
    del manifest["metadata"]["name"]
    assert validate_manifest(manifest) == ["metadata.name: required field is missing"]


def test_server_set_metadata_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["metadata"]["resourceVersion"] = "12"
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("metadata.resourceVersion: ")


def test_invalid_label_value_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["metadata"]["labels"]["team"] = "Ranking & Recs"
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("metadata.labels.team: invalid label value")


def test_invalid_pod_label_key_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["template"]["metadata"] = {"labels": {"bad key": "x"}}
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("spec.workerGroupSpecs[0].template.metadata.labels.bad key: invalid label key")


def test_owner_reference_needs_uid() -> None:
    manifest = minimal_raycluster()
    manifest["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "run"}]
    assert validate_manifest(manifest) == ["metadata.ownerReferences[0].uid: required field is missing"]


def test_empty_containers_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"] = []
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("spec.workerGroupSpecs[0].template.spec.containers: needs at least one container")


def test_duplicate_group_names_rejected() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"].append(copy.deepcopy(manifest["spec"]["workerGroupSpecs"][0]))
    problems = validate_manifest(manifest)
    assert problems == ["spec.workerGroupSpecs[1].groupName: 'workers' is used by another worker group"]


def test_resources_conflict_with_start_params() -> None:
    manifest = minimal_raycluster()
    group = manifest["spec"]["workerGroupSpecs"][0]
    group["rayStartParams"]["num-cpus"] = "1"
    group["resources"] = {"CPU": "1"}
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith("spec.workerGroupSpecs[0].resources: KubeRay rejects it")


def test_every_problem_reported() -> None:
    manifest = minimal_raycluster()
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = "x"
    head_container(manifest)["unknown"] = 1
    manifest["metadata"]["name"] = "Bad"
    assert len(validate_manifest(manifest)) == 3


def test_rayjob_validated_by_kind() -> None:
    cluster = minimal_raycluster()
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "train-job"},
        "spec": {"entrypoint": "python train.py", "rayClusterSpec": cluster["spec"]},
    }
    assert validate_manifest(job) == []


def test_rayjob_cluster_spec_path_named() -> None:
    cluster = minimal_raycluster()
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = -1
    cluster["spec"]["workerGroupSpecs"][0]["minReplicas"] = 0
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "train-job"},
        "spec": {"entrypoint": "python train.py", "rayClusterSpec": cluster["spec"], "shutdownAfterJobFinishes": "yes"},
    }
    problems = validate_manifest(job)
    assert "spec.rayClusterSpec.workerGroupSpecs[0].replicas: -1 is less than the minimum of 0" in problems
    assert "spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'" in problems


def test_rayjob_name_limit_is_shorter() -> None:
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j" * 48}, "spec": {}}
    problems = validate_manifest(job)
    assert len(problems) == 1
    assert "at most 47 characters" in problems[0]


def test_to_json_schema_closes_objects() -> None:
    schema = to_json_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    assert schema["additionalProperties"] is False


def test_to_json_schema_keeps_preserved_objects_open() -> None:
    schema = to_json_schema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    assert "additionalProperties" not in schema


def test_to_json_schema_adds_int_or_string() -> None:
    schema = to_json_schema({"x-kubernetes-int-or-string": True})
    assert schema["anyOf"] == [{"type": "integer"}, {"type": "string"}]


def test_to_json_schema_allows_null_when_nullable() -> None:
    schema = to_json_schema({"type": "string", "nullable": True})
    assert schema["type"] == ["string", "null"]


def test_format_path_like_kubectl() -> None:
    assert format_path(["spec", "workerGroupSpecs", 0, "replicas"]) == "spec.workerGroupSpecs[0].replicas"
