"""Unit tests of RayCluster names and label values derived from run data."""

import random
import re
import string
import uuid

import pytest

from resources.kuberay.naming import (
    MAX_CLUSTER_NAME_LENGTH,
    cluster_name,
    is_dns1035_label,
    is_label_value,
    is_qualified_name,
    label_value,
)

DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def random_run_ids(count: int, seed: int = 7) -> list[str]:
    generator = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_./:@ ~"
    ids = [str(uuid.UUID(int=generator.getrandbits(128))) for _ in range(count // 2)]
    ids += ["".join(generator.choices(alphabet, k=generator.randint(1, 200))) for _ in range(count - len(ids))]
    return ids


def test_cluster_name_valid_for_random_ids() -> None:
    for run_id in random_run_ids(2000):
        name = cluster_name(run_id=run_id)
        assert DNS1035.fullmatch(name), (run_id, name)
        assert len(name) <= MAX_CLUSTER_NAME_LENGTH, (run_id, name)
        assert not name[0].isdigit(), (run_id, name)
        assert name == name.lower(), (run_id, name)


def test_cluster_name_is_deterministic() -> None:
    for run_id in random_run_ids(200):
        assert cluster_name(run_id=run_id) == cluster_name(run_id=run_id)


def test_cluster_name_differs_between_runs() -> None:
    run_ids = random_run_ids(2000)
    names = {cluster_name(run_id=run_id) for run_id in run_ids}
    assert len(names) == len(set(run_ids))


def test_cluster_name_differs_after_truncation() -> None:
    common = "a" * 100
    first = cluster_name(run_id=common + "1")
    second = cluster_name(run_id=common + "2")
    assert first != second
    assert len(first) == MAX_CLUSTER_NAME_LENGTH


def test_cluster_name_differs_for_case_only() -> None:
    assert cluster_name(run_id="Run-A") != cluster_name(run_id="run-a")


def test_cluster_name_of_digit_run_id() -> None:
    name = cluster_name(run_id="0123abcd-4567")
    assert name.startswith("ray-0123abcd-4567-")
    assert is_dns1035_label(name)


def test_cluster_name_of_symbols_only() -> None:
    name = cluster_name(run_id="///")
    assert DNS1035.fullmatch(name)
    assert name.startswith("ray-")


def test_cluster_name_custom_prefix() -> None:
    assert cluster_name(run_id="abc", prefix="train").startswith("train-abc-")


@pytest.mark.parametrize("prefix", ["1ray", "Ray", "ray_x", "", "r" * 45])
def test_cluster_name_rejects_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        cluster_name(run_id="abc", prefix=prefix)


def test_label_value_keeps_valid_values() -> None:
    for value in ["", "a", "daily_retrain_job", "1998-03-15", "ranking.model", "x" * 63]:
        assert label_value(value) == value


def test_label_value_valid_for_random_strings() -> None:
    for value in random_run_ids(2000, seed=11):
        result = label_value(value)
        assert LABEL_VALUE.fullmatch(result), (value, result)
        assert len(result) <= 63, (value, result)
        assert is_label_value(result), (value, result)


def test_label_value_is_deterministic() -> None:
    for value in random_run_ids(200, seed=3):
        assert label_value(value) == label_value(value)


def test_label_value_distinct_long_values() -> None:
    first = label_value("team/" + "x" * 100 + "1")
    second = label_value("team/" + "x" * 100 + "2")
    assert first != second
    assert len(first) <= 63


def test_label_value_keeps_readable_start() -> None:
    assert label_value("Ranking & Recs").startswith("Ranking-Recs-")


def test_label_value_of_symbols_only() -> None:
    result = label_value("@@@")
    assert is_label_value(result)
    assert result != ""


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("app", True),
        ("dagster/run-id", True),
        ("app.kubernetes.io/managed-by", True),
        ("training-pipelines/gpu-type", True),
        ("Bad_Prefix/name", False),
        ("/name", False),
        ("prefix/", False),
        ("-name", False),
        ("n" * 64, False),
    ],
)
def test_qualified_name_rules(key: str, valid: bool) -> None:
    assert is_qualified_name(key) is valid
