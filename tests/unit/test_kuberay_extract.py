"""Unit tests of scripts/extract_kuberay_schemas.py and the schema files it wrote into the package."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "extract_kuberay_schemas.py"
PACKAGED_CRDS = REPO_ROOT / "resources" / "kuberay" / "crds"
SHARED_CRDS = REPO_ROOT.parent / "shared" / "kuberay-crds"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("extract_kuberay_schemas", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_schema() -> dict:
    return {
        "description": "A Widget.",
        "type": "object",
        "properties": {
            "apiVersion": {"description": "API version.", "type": "string"},
            # A field named "description" is data, not documentation, and must stay.
            "description": {"description": "Free text of the widget.", "type": "string", "maxLength": 10},
            "spec": {
                "description": "The spec.",
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"description": "Size.", "type": "integer", "format": "int32", "minimum": 0},
                    "port": {
                        "description": "Port.",
                        "anyOf": [{"type": "integer"}, {"type": "string"}],
                        "x-kubernetes-int-or-string": True,
                    },
                    "items": {
                        "description": "Items.",
                        "type": "array",
                        "items": {
                            "description": "One item.",
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                        },
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                    },
                    "labels": {"description": "Labels.", "type": "object", "additionalProperties": {"type": "string"}},
                    "mode": {
                        "description": "Mode.",
                        "type": "string",
                        "enum": ["a", "b"],
                        "default": "a",
                        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "mode is immutable"}],
                    },
                    "extra": {
                        "description": "Free-form.",
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                },
            },
        },
    }


def expected_without_descriptions() -> dict:
    schema = synthetic_schema()
    del schema["description"]
    del schema["properties"]["apiVersion"]["description"]
    del schema["properties"]["description"]["description"]
    spec = schema["properties"]["spec"]
    del spec["description"]
    for field in spec["properties"].values():
        del field["description"]
    del spec["properties"]["items"]["items"]["description"]
    return schema


def write_crd(folder: Path, *, file_name: str, name: str, kind: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "ray.io",
            "names": {"kind": kind},
            "versions": [
                {"name": "v1alpha1", "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": synthetic_schema()}},
            ],
        },
    }
    (folder / file_name).write_text(yaml.safe_dump(crd), encoding="utf-8")


def test_strip_descriptions_keeps_everything_else() -> None:
    script = load_script()
    assert script.strip_descriptions(synthetic_schema()) == expected_without_descriptions()


def test_strip_descriptions_keeps_description_property() -> None:
    script = load_script()
    stripped = script.strip_descriptions(synthetic_schema())
    assert stripped["properties"]["description"] == {"type": "string", "maxLength": 10}


def test_extract_writes_stripped_v1_schemas(tmp_path: Path) -> None:
    script = load_script()
    crd_folder = tmp_path / "crds"
    crd_folder.mkdir()
    write_crd(crd_folder, file_name="ray.io_rayclusters.yaml", name="rayclusters.ray.io", kind="RayCluster")
    write_crd(crd_folder, file_name="ray.io_rayjobs.yaml", name="rayjobs.ray.io", kind="RayJob")
    output = tmp_path / "out"

    assert script.main([str(crd_folder), "--output", str(output), "--kuberay-version", "v9.9.9"]) == 0

    for name in ("rayclusters.ray.io.v1.json", "rayjobs.ray.io.v1.json"):
        text = (output / name).read_text(encoding="utf-8")
        assert json.loads(text) == expected_without_descriptions()
        assert "Free text" not in text
        assert "\n" not in text.rstrip("\n")
    assert (output / "VERSION").read_text(encoding="utf-8") == "v9.9.9\n"


def test_extract_output_has_sorted_keys(tmp_path: Path) -> None:
    script = load_script()
    text = script.schema_to_json({"b": 1, "a": {"d": 2, "c": 3}})
    assert text == '{"a":{"c":3,"d":2},"b":1}\n'


def test_extract_rejects_non_crd_file(tmp_path: Path) -> None:
    script = load_script()
    path = tmp_path / "not-a-crd.yaml"
    path.write_text("kind: ConfigMap\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a CustomResourceDefinition"):
        script.load_crd_schema(path)


def test_extract_rejects_missing_version(tmp_path: Path) -> None:
    script = load_script()
    write_crd(tmp_path, file_name="crd.yaml", name="rayclusters.ray.io", kind="RayCluster")
    with pytest.raises(ValueError, match="no version 'v2'"):
        script.load_crd_schema(tmp_path / "crd.yaml", version="v2")


@pytest.mark.skipif(
    not SHARED_CRDS.is_dir(), reason="the KubeRay CRD sources are not checked out next to the repository"
)
def test_packaged_schemas_match_crd_sources(tmp_path: Path) -> None:
    script = load_script()
    script.extract(crd_folder=SHARED_CRDS, output_folder=tmp_path, kuberay_version="v1.7.0")
    for name in ("rayclusters.ray.io.v1.json", "rayjobs.ray.io.v1.json", "VERSION"):
        assert (tmp_path / name).read_bytes() == (PACKAGED_CRDS / name).read_bytes(), name


def test_packaged_schemas_have_no_descriptions() -> None:
    for name in ("rayclusters.ray.io.v1.json", "rayjobs.ray.io.v1.json"):
        schema = json.loads((PACKAGED_CRDS / name).read_text(encoding="utf-8"))
        script = load_script()
        assert script.strip_descriptions(schema) == schema, name


def test_packaged_schemas_stay_small() -> None:
    for name in ("rayclusters.ray.io.v1.json", "rayjobs.ray.io.v1.json"):
        assert (PACKAGED_CRDS / name).stat().st_size < 400_000, name
