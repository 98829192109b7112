"""Extract the v1 openAPIV3Schema of the KubeRay RayCluster and RayJob CRDs into resources/kuberay/crds/.

The CRD files run to megabytes, almost all of it field documentation. This script keeps
every validation fact of the schema: types, formats, patterns, enums, required fields,
defaults and the x-kubernetes-* extensions. It drops each schema node's ``description``
and writes compact JSON with sorted keys, so a new KubeRay release shows up as a small diff.

Usage:
    python scripts/extract_kuberay_schemas.py [CRD_FOLDER] [--kuberay-version v1.7.0] [--output FOLDER]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CRD_FOLDER = REPO_ROOT.parent / "shared" / "kuberay-crds"
DEFAULT_OUTPUT_FOLDER = REPO_ROOT / "resources" / "kuberay" / "crds"
DEFAULT_KUBERAY_VERSION = "v1.7.0"
CRD_FILES = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml")
SCHEMA_VERSION = "v1"

# Keywords whose value is one subschema, a list of subschemas, or a map of name to subschema.
# Other keywords (default, enum, x-kubernetes-validations) hold data, so a "description"
# key inside them is a value and stays.
_SUBSCHEMA_KEYWORDS = ("additionalProperties", "items", "not")
_SUBSCHEMA_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf")
_SUBSCHEMA_MAP_KEYWORDS = ("properties", "patternProperties")


def strip_descriptions(schema: Any) -> Any:
    """Return a copy of an OpenAPI v3 schema without the ``description`` of any schema node.

    Only the keyword is dropped: a property that is itself named ``description`` is kept.
    """
    if not isinstance(schema, dict):
        return schema

    stripped: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword == "description":
            continue
        if keyword in _SUBSCHEMA_KEYWORDS:
            stripped[keyword] = strip_descriptions(value)
        elif keyword in _SUBSCHEMA_LIST_KEYWORDS:
            stripped[keyword] = [strip_descriptions(item) for item in value]
        elif keyword in _SUBSCHEMA_MAP_KEYWORDS:
            stripped[keyword] = {name: strip_descriptions(item) for name, item in value.items()}
        else:
            stripped[keyword] = value
    return stripped


def load_crd_schema(crd_path: Path, *, version: str = SCHEMA_VERSION) -> tuple[str, dict[str, Any]]:
    """Read a CRD file and return its name (such as ``rayclusters.ray.io``) and the version's openAPIV3Schema.

    Raises:
        ValueError: the file is not a CustomResourceDefinition or has no such version.
    """
    crd = yaml.safe_load(crd_path.read_text(encoding="utf-8"))
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{crd_path} is not a CustomResourceDefinition; pass the KubeRay CRD folder.")

    name = crd["metadata"]["name"]
    for served in crd["spec"]["versions"]:
        if served.get("name") == version:
            return name, served["schema"]["openAPIV3Schema"]
    found = [served.get("name") for served in crd["spec"]["versions"]]
    raise ValueError(f"{crd_path} has no version {version!r} (found {found}); use a KubeRay release with ray.io/v1.")


def schema_to_json(schema: dict[str, Any]) -> str:
    """Serialize a schema as compact JSON with sorted keys and a final newline."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def extract(*, crd_folder: Path, output_folder: Path, kuberay_version: str) -> list[Path]:
    """Write one stripped schema file per CRD plus a VERSION file, and return the paths written."""
    output_folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for file_name in CRD_FILES:
        name, schema = load_crd_schema(crd_folder / file_name)
        target = output_folder / f"{name}.{SCHEMA_VERSION}.json"
        target.write_text(schema_to_json(strip_descriptions(schema)), encoding="utf-8")
        written.append(target)

    version_file = output_folder / "VERSION"
    version_file.write_text(f"{kuberay_version}\n", encoding="utf-8")
    written.append(version_file)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "crd_folder",
        nargs="?",
        type=Path,
        default=DEFAULT_CRD_FOLDER,
        help=f"Folder with {' and '.join(CRD_FILES)} (default: {DEFAULT_CRD_FOLDER}).",
    )
    parser.add_argument(
        "--kuberay-version",
        default=DEFAULT_KUBERAY_VERSION,
        help=f"KubeRay release the CRDs come from, written to VERSION (default: {DEFAULT_KUBERAY_VERSION}).",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT_FOLDER,
        help=f"Folder to write the JSON schemas to (default: {DEFAULT_OUTPUT_FOLDER}).",
    )
    args = parser.parse_args(argv)

    for path in extract(crd_folder=args.crd_folder, output_folder=args.output, kuberay_version=args.kuberay_version):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
