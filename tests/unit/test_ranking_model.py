import dataclasses
import datetime

import numpy as np
import pandas as pd
import pytest
import torch

from training_pipelines.ranking import features
from training_pipelines.ranking.metrics import roc_auc
from training_pipelines.ranking.model import (
    ModelConfig,
    RankingModel,
    batch_to_tensors,
    loss_fn,
    model_from_bytes,
    model_to_bytes,
    predict_proba,
    shrink_corrections,
)
from training_pipelines.ranking.train_plain import TrainingHyperparameters, train_epochs

SMALL_CONFIG = ModelConfig(user_buckets=64, item_buckets=64, embedding_dim=4, hidden_dims=(8,))


def make_examples(rows: int, *, seed: int = 0) -> pd.DataFrame:
    """Build a synthetic examples frame whose label depends on gender x genre and the prior."""
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {
        "user_id": rng.integers(0, 1000, rows),
        "item_id": rng.integers(0, 1000, rows),
        "user_bucket": rng.integers(0, 64, rows),
        "item_bucket": rng.integers(0, 64, rows),
        "age_bucket": rng.integers(0, features.NUM_AGE_BUCKETS, rows),
        "gender_index": rng.integers(1, features.NUM_GENDERS, rows),
        "occupation_index": rng.integers(0, features.NUM_OCCUPATIONS, rows),
    }
    genres = (rng.random((rows, len(features.GENRE_COLUMNS))) < 0.2).astype(np.float32)
    for index, column in enumerate(features.GENRE_FEATURE_COLUMNS):
        columns[column] = genres[:, index]
    for column in features.DENSE_COLUMNS:
        columns[column] = rng.normal(size=rows).astype(np.float32)
    prior = rng.normal(scale=0.5, size=rows).astype(np.float32)
    columns[features.PRIOR_LOGIT_COLUMN] = prior

    likes_action = (columns["gender_index"] == 1) == (genres[:, features.GENRE_COLUMNS.index("Action")] == 1)
    true_logit = prior + np.where(likes_action, 1.5, -1.5)
    columns["label"] = (rng.random(rows) < 1 / (1 + np.exp(-true_logit))).astype(np.float32)
    columns["weight"] = np.ones(rows, dtype=np.float32)
    return pd.DataFrame(columns)


def to_batch(examples: pd.DataFrame) -> dict[str, torch.Tensor]:
    columns = (*features.FEATURE_COLUMNS, features.LABEL_COLUMN)
    return batch_to_tensors({name: examples[name].to_numpy() for name in columns}, device="cpu")


def test_forward_shape_and_dtypes() -> None:
    torch.manual_seed(0)
    model = RankingModel(SMALL_CONFIG)
    batch = to_batch(make_examples(7))

    logits = model(batch)

    assert logits.shape == (7,)
    assert logits.dtype == torch.float32
    assert batch["user_bucket"].dtype == torch.int64
    assert batch["genres"].shape == (7, len(features.GENRE_COLUMNS))
    assert batch["dense"].shape == (7, len(features.DENSE_COLUMNS))
    assert batch["label"].dtype == torch.float32


def test_batch_accepts_tensors() -> None:
    examples = make_examples(5)
    from_numpy = to_batch(examples)
    as_tensors = {name: torch.as_tensor(examples[name].to_numpy(copy=True)) for name in features.FEATURE_COLUMNS}

    from_tensors = batch_to_tensors(as_tensors, device="cpu")

    for name, tensor in from_tensors.items():
        assert torch.equal(tensor, from_numpy[name]), name


def test_batch_missing_column_raises() -> None:
    examples = make_examples(3).drop(columns=["age_bucket"])

    with pytest.raises(KeyError, match="age_bucket"):
        batch_to_tensors({name: examples[name].to_numpy() for name in examples.columns}, device="cpu")


def test_untrained_model_ranks_like_prior() -> None:
    torch.manual_seed(0)
    examples = make_examples(500)

    probabilities = predict_proba(RankingModel(SMALL_CONFIG), examples)
    prior = 1 / (1 + np.exp(-examples[features.PRIOR_LOGIT_COLUMN].to_numpy()))

    assert probabilities == pytest.approx(prior, abs=0.01)


def test_training_reduces_loss_and_learns_cross() -> None:
    torch.manual_seed(0)
    train = make_examples(2000, seed=1)
    test = make_examples(1000, seed=2)
    model = RankingModel(SMALL_CONFIG)
    prior_auc = roc_auc(test["label"].to_numpy(), test[features.PRIOR_LOGIT_COLUMN].to_numpy())

    losses = train_epochs(model, train, epochs=8, batch_size=128, learning_rate=1e-2, seed=0)

    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.05
    assert roc_auc(test["label"].to_numpy(), predict_proba(model, test)) > prior_auc + 0.05


def test_training_is_repeatable_with_seed() -> None:
    examples = make_examples(300)
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = RankingModel(SMALL_CONFIG)
        train_epochs(model, examples, epochs=2, batch_size=64, learning_rate=1e-2, seed=3)
        outputs.append(predict_proba(model, examples))

    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_bytes_round_trip_gives_same_outputs() -> None:
    torch.manual_seed(0)
    examples = make_examples(50)
    model = RankingModel(SMALL_CONFIG)
    train_epochs(model, examples, epochs=1, batch_size=16, learning_rate=1e-2, seed=0)

    restored, config = model_from_bytes(model_to_bytes(model, SMALL_CONFIG))

    assert config == SMALL_CONFIG
    np.testing.assert_array_equal(predict_proba(restored, examples), predict_proba(model, examples))


def test_config_dict_round_trip() -> None:
    config = ModelConfig(hidden_dims=(5, 3), dropout=0.2)

    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**config.to_dict(), "layers": 3})


def test_default_config_matches_feature_shapes() -> None:
    config = ModelConfig()

    assert config.user_buckets == features.USER_HASH_BUCKETS
    assert config.item_buckets == features.ITEM_HASH_BUCKETS
    assert config.num_dense == len(features.DENSE_COLUMNS)
    assert dataclasses.asdict(ModelConfig.from_dict(config.to_dict())) == dataclasses.asdict(config)


def test_unseen_ids_score_without_error() -> None:
    day_1 = datetime.date(1998, 1, 1)
    day_2 = datetime.date(1998, 1, 2)
    seconds = [int(datetime.datetime(d.year, d.month, d.day, tzinfo=datetime.UTC).timestamp()) for d in (day_1, day_2)]
    events = pd.DataFrame({"user_id": [1, 10**12], "item_id": [5, 2**40], "rating": [5, 2], "timestamp": seconds})
    users = pd.DataFrame({"user_id": [1], "age": [30], "gender": ["F"], "occupation": ["writer"], "zip_code": ["1"]})
    items = pd.DataFrame(
        {"item_id": [5], **{genre: [1 if genre == "Drama" else 0] for genre in features.GENRE_COLUMNS}}
    )
    examples = features.build_examples(events, users, items, days=[day_2])

    probabilities = predict_proba(RankingModel(), examples)

    assert probabilities.shape == (1,)
    assert 0.0 < probabilities[0] < 1.0


def test_predict_on_empty_frame() -> None:
    empty = make_examples(0)

    assert predict_proba(RankingModel(SMALL_CONFIG), empty).shape == (0,)


def test_loss_matches_bce_and_weights() -> None:
    logits = torch.tensor([0.0, 2.0])
    labels = torch.tensor([1.0, 0.0])
    per_row = torch.tensor([np.log(2.0), np.log(1 + np.exp(2.0))], dtype=torch.float32)

    assert loss_fn(logits, labels).item() == pytest.approx(per_row.mean().item(), rel=1e-6)
    weighted = loss_fn(logits, labels, torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx(((3 * per_row[0] + per_row[1]) / 4).item(), rel=1e-6)


def test_default_hyperparameters_are_positive() -> None:
    defaults = TrainingHyperparameters()

    assert defaults.epochs > 0
    assert defaults.batch_size > 0
    assert defaults.learning_rate > 0


def test_warm_start_keeps_shapes_and_outputs() -> None:
    torch.manual_seed(0)
    examples = make_examples(200)
    previous = RankingModel(SMALL_CONFIG)
    train_epochs(previous, examples, epochs=1, batch_size=32, learning_rate=1e-2, seed=0)
    restored, config = model_from_bytes(model_to_bytes(previous, SMALL_CONFIG))

    warm = RankingModel(config)
    warm.load_state_dict(restored.state_dict())

    for name, tensor in previous.state_dict().items():
        assert warm.state_dict()[name].shape == tensor.shape, name
    np.testing.assert_array_equal(predict_proba(warm, examples), predict_proba(previous, examples))


def test_shrink_scales_every_parameter() -> None:
    torch.manual_seed(0)
    model = RankingModel(SMALL_CONFIG)
    train_epochs(model, make_examples(200), epochs=1, batch_size=32, learning_rate=1e-2, seed=0)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    shrink_corrections(model, 0.5)

    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name] * 0.5, msg=name)


def test_full_shrink_gives_baseline_scores() -> None:
    torch.manual_seed(0)
    examples = make_examples(300)
    model = RankingModel(SMALL_CONFIG)
    train_epochs(model, examples, epochs=2, batch_size=32, learning_rate=1e-2, seed=0)
    prior = 1 / (1 + np.exp(-examples[features.PRIOR_LOGIT_COLUMN].to_numpy()))

    shrink_corrections(model, 0.0)

    assert predict_proba(model, examples) == pytest.approx(prior, abs=1e-6)


def test_shrink_of_one_changes_nothing() -> None:
    torch.manual_seed(0)
    examples = make_examples(100)
    model = RankingModel(SMALL_CONFIG)
    train_epochs(model, examples, epochs=1, batch_size=32, learning_rate=1e-2, seed=0)
    expected = predict_proba(model, examples)

    shrink_corrections(model, 1.0)

    np.testing.assert_array_equal(predict_proba(model, examples), expected)


@pytest.mark.parametrize("factor", [-0.1, 1.5])
def test_shrink_rejects_factor_outside_unit_interval(factor: float) -> None:
    with pytest.raises(ValueError, match="shrink factor"):
        shrink_corrections(RankingModel(SMALL_CONFIG), factor)


def test_disabled_parts_leave_logits_unchanged() -> None:
    torch.manual_seed(0)
    # Uncentred, so a constant cross row would shift the logit if the crosses were used.
    model = RankingModel(dataclasses.replace(SMALL_CONFIG, center_crosses=False))
    batch = to_batch(make_examples(20))
    expected = model(batch)

    with torch.no_grad():
        model.user_embedding.weight.fill_(3.0)

    assert model.crosses is None
    assert not model.config.use_crosses
    assert not model.config.use_interaction
    torch.testing.assert_close(model(batch), expected)


@pytest.mark.parametrize("use_crosses", [False, True])
@pytest.mark.parametrize("use_interaction", [False, True])
def test_every_parameter_gets_gradient(use_crosses: bool, use_interaction: bool) -> None:
    # DistributedDataParallel fails when a parameter takes no part in the loss.
    config = dataclasses.replace(SMALL_CONFIG, use_crosses=use_crosses, use_interaction=use_interaction)
    model = RankingModel(config)
    batch = to_batch(make_examples(20))

    loss_fn(model(batch), batch["label"]).backward()

    without_gradient = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert without_gradient == []


def test_enabled_crosses_change_logits() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL_CONFIG, use_crosses=True, center_crosses=False)
    model = RankingModel(config)
    batch = to_batch(make_examples(20))
    expected = model(batch)

    with torch.no_grad():
        model.crosses[0].weight.fill_(1.0)

    genre_share = (batch["genres"].sum(dim=1) > 0).float()
    torch.testing.assert_close(model(batch), expected + genre_share)


def test_config_without_switches_loads_legacy_model() -> None:
    saved = ModelConfig().to_dict()
    del saved["use_crosses"]
    del saved["use_interaction"]

    config = ModelConfig.from_dict(saved)

    assert config.use_crosses
    assert config.use_interaction


def test_warm_start_defaults_train_less() -> None:
    defaults = TrainingHyperparameters()

    assert 1 <= defaults.warm_start_epochs <= defaults.epochs
    assert 0.0 <= defaults.warm_start_shrink <= 1.0
