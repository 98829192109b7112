"""The ranking_model_evaluation asset on real days of data, invoked directly on a temporary storage root."""

import dagster as dg
import pytest

from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.ranking import CHAMPION_FILE, EVALUATION_FOLDER, MODEL_FOLDER, ranking_model_evaluation
from training_pipelines.defs.ratings import ratings_daily
from training_pipelines.defs.settings import RankingSettings
from training_pipelines.ranking.model import ModelConfig, RankingModel, model_to_bytes
from training_pipelines.training.request import MODEL_FILE

DAY = "1997-10-01"
HOLDOUT_DAY = "1997-10-02"


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> TrainingStorage:
    """Store the real ratings up to the hold-out day, and an untrained model for each of three days."""
    storage = TrainingStorage(root=str(tmp_path_factory.mktemp("storage")))
    with dg.build_asset_context(partition_key_range=dg.PartitionKeyRange("1997-09-20", HOLDOUT_DAY)) as context:
        ratings_daily(context, ratings_source=RatingsSource(), storage=storage)
    config = ModelConfig()
    for day in ("1997-09-25", DAY, HOLDOUT_DAY):
        storage.write_bytes(model_to_bytes(RankingModel(config), config), MODEL_FOLDER, day, MODEL_FILE)
    return storage


def evaluate_day(storage: TrainingStorage) -> tuple[dict[str, object], dict[str, dg.MetadataValue]]:
    with dg.build_asset_context(partition_key=DAY) as context:
        outputs = list(
            ranking_model_evaluation(
                context, storage=storage, ratings_source=RatingsSource(), ranking_settings=RankingSettings()
            )
        )
    materialization = next(output for output in outputs if isinstance(output, dg.MaterializeResult))
    return storage.read_json(EVALUATION_FOLDER, f"{DAY}.json"), dict(materialization.metadata or {})


def point_champion_at(storage: TrainingStorage, day: str) -> None:
    storage.write_json({"partition": day, "model_path": [MODEL_FOLDER, day, MODEL_FILE], "auc": 0.6}, CHAMPION_FILE)


def test_earlier_champion_is_scored(storage: TrainingStorage) -> None:
    point_champion_at(storage, "1997-09-25")

    report, metadata = evaluate_day(storage)

    assert report["holdout_day"] == HOLDOUT_DAY
    assert report["champion"] is not None
    assert report["champion"]["partition"] == "1997-09-25"
    assert "champion_auc" in metadata


def test_champion_trained_on_holdout_not_scored(storage: TrainingStorage) -> None:
    # The champion of the hold-out day saw that day's events in training.
    point_champion_at(storage, HOLDOUT_DAY)

    report, metadata = evaluate_day(storage)

    assert report["champion"] is None
    assert "champion_auc" not in metadata
    assert "model_auc" in metadata
    assert "baseline_auc" in metadata
