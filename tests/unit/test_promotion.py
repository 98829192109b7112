"""Unit tests of the production_model asset's promotion rule, invoked directly on a temporary storage root."""

from pathlib import Path

import dagster as dg
import pytest

from resources.storage import TrainingStorage
from training_pipelines.defs.ranking import CHAMPION_FILE, EVALUATION_FOLDER, MODEL_FOLDER, production_model
from training_pipelines.training.request import MODEL_FILE

DAY = "1997-10-10"
HOLDOUT_DAY = "1997-10-11"
CHAMPION_DAY = "1997-10-05"


@pytest.fixture
def storage(tmp_path: Path) -> TrainingStorage:
    return TrainingStorage(root=str(tmp_path))


def write_report(
    storage: TrainingStorage,
    *,
    candidate_auc: float | None,
    champion_auc: float | None = None,
    champion_day: str | None = None,
) -> None:
    """Write the evaluation report that ranking_model_evaluation stores for ``DAY``."""
    champion = None
    if champion_day is not None:
        champion = {"partition": champion_day, "auc": champion_auc, "log_loss": 0.6, "ndcg_at_10": 0.3}
    report = {
        "partition": DAY,
        "holdout_day": HOLDOUT_DAY,
        "model": {"auc": candidate_auc, "log_loss": 0.6, "ndcg_at_10": 0.3, "hit_rate_at_10": 0.5},
        "baseline": {"auc": 0.6, "log_loss": 0.7, "ndcg_at_10": 0.2, "hit_rate_at_10": 0.4},
        "champion": champion,
    }
    storage.write_json(report, EVALUATION_FOLDER, f"{DAY}.json")


def write_champion(storage: TrainingStorage, *, day: str = CHAMPION_DAY, auc: float = 0.7) -> bytes:
    pointer = {
        "partition": day,
        "model_path": [MODEL_FOLDER, day, MODEL_FILE],
        "model_uri": storage.uri(MODEL_FOLDER, day, MODEL_FILE),
        "auc": auc,
        "holdout_day": "1997-10-06",
        "run_id": "earlier-run",
    }
    storage.write_json(pointer, CHAMPION_FILE)
    return storage.read_bytes(CHAMPION_FILE)


def promote(storage: TrainingStorage, day: str = DAY) -> dg.MaterializeResult:
    with dg.build_asset_context(partition_key=day) as context:
        return production_model(context, storage=storage)


def metadata_value(result: dg.MaterializeResult, key: str) -> object:
    value = (result.metadata or {})[key]
    return getattr(value, "value", value)


def test_promotes_without_champion(storage: TrainingStorage) -> None:
    write_report(storage, candidate_auc=0.72)

    result = promote(storage)

    pointer = storage.read_json(CHAMPION_FILE)
    assert metadata_value(result, "promoted") is True
    assert pointer["partition"] == DAY
    assert pointer["auc"] == 0.72
    assert pointer["holdout_day"] == HOLDOUT_DAY
    assert pointer["model_path"] == [MODEL_FOLDER, DAY, MODEL_FILE]
    assert pointer["model_uri"] == storage.uri(MODEL_FOLDER, DAY, MODEL_FILE)


def test_keeps_better_champion(storage: TrainingStorage) -> None:
    before = write_champion(storage, auc=0.7)
    write_report(storage, candidate_auc=0.69, champion_auc=0.71, champion_day=CHAMPION_DAY)

    result = promote(storage)

    assert metadata_value(result, "promoted") is False
    assert metadata_value(result, "champion_partition") == CHAMPION_DAY
    assert metadata_value(result, "candidate_auc") == 0.69
    assert metadata_value(result, "champion_auc") == 0.71
    assert storage.read_bytes(CHAMPION_FILE) == before


def test_promotes_equal_candidate(storage: TrainingStorage) -> None:
    write_champion(storage, auc=0.7)
    write_report(storage, candidate_auc=0.71, champion_auc=0.71, champion_day=CHAMPION_DAY)

    result = promote(storage)

    assert metadata_value(result, "promoted") is True
    assert storage.read_json(CHAMPION_FILE)["partition"] == DAY


def test_promotes_better_candidate(storage: TrainingStorage) -> None:
    write_champion(storage, auc=0.7)
    write_report(storage, candidate_auc=0.75, champion_auc=0.71, champion_day=CHAMPION_DAY)

    result = promote(storage)

    pointer = storage.read_json(CHAMPION_FILE)
    assert metadata_value(result, "promoted") is True
    assert metadata_value(result, "champion_partition") == DAY
    assert pointer["partition"] == DAY
    assert pointer["auc"] == 0.75


def test_compares_on_same_holdout(storage: TrainingStorage) -> None:
    # The stored pointer's AUC was measured on an older hold-out day, so only the report's champion AUC counts.
    before = write_champion(storage, auc=0.5)
    write_report(storage, candidate_auc=0.6, champion_auc=0.65, champion_day=CHAMPION_DAY)

    result = promote(storage)

    assert metadata_value(result, "promoted") is False
    assert storage.read_bytes(CHAMPION_FILE) == before


def test_keeps_champion_over_candidate_without_auc(storage: TrainingStorage) -> None:
    before = write_champion(storage, auc=0.7)
    write_report(storage, candidate_auc=None, champion_auc=0.7, champion_day=CHAMPION_DAY)

    result = promote(storage)

    assert metadata_value(result, "promoted") is False
    assert storage.read_bytes(CHAMPION_FILE) == before


def test_promotes_over_champion_without_auc(storage: TrainingStorage) -> None:
    write_champion(storage, auc=0.7)
    write_report(storage, candidate_auc=0.6, champion_auc=None, champion_day=CHAMPION_DAY)

    result = promote(storage)

    assert metadata_value(result, "promoted") is True
    assert storage.read_json(CHAMPION_FILE)["partition"] == DAY


def test_rerun_of_champion_day_promotes(storage: TrainingStorage) -> None:
    write_champion(storage, day=DAY, auc=0.8)
    write_report(storage, candidate_auc=0.7, champion_auc=0.8, champion_day=DAY)

    result = promote(storage)

    assert metadata_value(result, "promoted") is True
    assert storage.read_json(CHAMPION_FILE)["auc"] == 0.7


def test_no_promotion_without_any_auc(storage: TrainingStorage) -> None:
    write_report(storage, candidate_auc=None)

    result = promote(storage)

    assert metadata_value(result, "promoted") is False
    assert not storage.exists(CHAMPION_FILE)


def test_missing_report_raises(storage: TrainingStorage) -> None:
    with pytest.raises(FileNotFoundError):
        promote(storage)

    assert not storage.exists(CHAMPION_FILE)


def test_backfill_keeps_newer_champion(tmp_path: Path) -> None:
    storage = TrainingStorage(root=str(tmp_path))
    storage.write_json(
        {"partition": "1998-03-15", "model_path": ["ranking_model", "1998-03-15", "model.pt"], "auc": 0.60},
        "production",
        "champion.json",
    )
    before = (tmp_path / "production" / "champion.json").read_bytes()
    storage.write_json(
        {
            "partition": "1998-01-10",
            "holdout_day": "1998-01-11",
            "model": {"auc": 0.70},
            "baseline": {"auc": 0.65},
            "champion": {"partition": "1998-03-15", "auc": 0.60},
        },
        "ranking_model_evaluation",
        "1998-01-10.json",
    )

    with dg.build_asset_context(partition_key="1998-01-10") as context:
        result = production_model(context, storage=storage)

    assert result.metadata["promoted"].value is False
    assert (tmp_path / "production" / "champion.json").read_bytes() == before
