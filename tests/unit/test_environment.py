"""Environment variables turn into resources, and bad values name the variable."""

import pytest

from resources.errors import InvalidRequestError
from training_pipelines.defs.environment import build_resources, retrain_hour


def test_defaults_need_no_variables() -> None:
    resources = build_resources({})

    assert resources["ray_cluster"].workers == 2  # type: ignore[attr-defined]
    assert resources["storage"].root == ".data"  # type: ignore[attr-defined]


def test_variables_set_cluster_fields() -> None:
    resources = build_resources({"RAY_WORKERS": "3", "RAY_MEMORY_PER_WORKER": "1Gi", "TRAINING_STORAGE_ROOT": "/x"})

    assert resources["ray_cluster"].workers == 3  # type: ignore[attr-defined]
    assert resources["ray_cluster"].memory_per_worker == "1Gi"  # type: ignore[attr-defined]
    assert resources["storage"].root == "/x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RAY_WORKERS", "0"),
        ("RAY_WORKERS", "two"),
        ("KUBERAY_TEMPLATE", "tpu"),
        ("KUBERAY_NAMESPACE", "Bad NS"),
        ("KUBE_API_URL", "notaurl"),
        ("KUBE_API_URL", "ftp://127.0.0.1:8001"),
        ("RAY_CPUS_PER_WORKER", "-1"),
        ("RAY_MEMORY_PER_WORKER", "lots"),
        ("RAY_OBJECT_STORE_MEMORY", "1Ki"),
        ("RAY_BACKEND", "k8s"),
        ("TRAINING_STORAGE_ROOT", "ftp://127.0.0.1/outputs"),
        ("RATINGS_EVENTS_URI", "http://127.0.0.1/events.parquet"),
    ],
)
def test_invalid_variable_is_named(variable: str, value: str) -> None:
    environ = {variable: value}
    if variable.startswith("KUBE"):
        environ["RAY_BACKEND"] = "kuberay"

    with pytest.raises(InvalidRequestError) as raised:
        build_resources(environ)

    assert raised.value.field == variable
    assert value in str(raised.value)


@pytest.mark.parametrize(
    "root", ["/srv/outputs", "relative/outputs", "file:///srv/outputs", "s3://bucket/ml", "gs://b/ml"]
)
def test_storage_roots_accepted(root: str) -> None:
    resources = build_resources({"TRAINING_STORAGE_ROOT": root})

    assert resources["storage"].root == root  # type: ignore[attr-defined]


def test_fractional_cpus_need_whole_number() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        build_resources({"RAY_CPUS_PER_WORKER": "0.5"})

    assert raised.value.field == "RAY_CPUS_PER_WORKER"
    assert "'0.5' is not a whole number" in str(raised.value)


@pytest.mark.parametrize("value", ["abc", "24", "-1", ""])
def test_invalid_retrain_hour_is_named(value: str) -> None:
    with pytest.raises(InvalidRequestError, match="RETRAIN_HOUR_UTC"):
        retrain_hour({"RETRAIN_HOUR_UTC": value})


def test_retrain_hour_defaults_to_two() -> None:
    assert retrain_hour({}) == 2
