"""Neural model that predicts whether a user rates an item 4 or more.

The logit is the popularity baseline's logit (an input column) plus learned
corrections: a bias, a linear term of the history features and a small MLP, and
optionally (see ``ModelConfig``) wide user-feature x genre crosses and a
factorised user x item interaction. The output layers of the corrections start
at zero and the embeddings near zero, so an untrained model scores almost exactly like
the baseline and training only has to learn what the item's history does not
already capture. Rows with unknown ids all use bucket 0, a shared learned vector.
"""

import dataclasses
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from training_pipelines.ranking import features


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the ranking model. Table sizes must match those used by ``build_examples``."""

    user_buckets: int = features.USER_HASH_BUCKETS
    item_buckets: int = features.ITEM_HASH_BUCKETS
    num_age_buckets: int = features.NUM_AGE_BUCKETS
    num_genders: int = features.NUM_GENDERS
    num_occupations: int = features.NUM_OCCUPATIONS
    num_genres: int = len(features.GENRE_COLUMNS)
    num_dense: int = len(features.DENSE_COLUMNS)
    embedding_dim: int = 16
    hidden_dims: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    center_crosses: bool = True
    """Subtract each cross row's mean over genres, so the crosses re-rank genres but do not shift a user's level."""
    use_crosses: bool = False
    """Add the wide user-feature x genre crosses to the logit."""
    use_interaction: bool = False
    """Add the factorised user-side x item-side dot product to the logit."""

    # Both are off by default. On MovieLens-100k (28-day windows, next-day AUC on
    # 32 days, every 6th from 1997-10-14), adding either one to the bias and the
    # history-feature weights made the model fall more than 0.01 below the
    # popularity baseline on 1 of the 32 days. The model with every part did on 3,
    # and the bias, the history-feature weights and the MLP alone on none.

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-compatible values."""
        values = dataclasses.asdict(self)
        values["hidden_dims"] = list(self.hidden_dims)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build a config from ``to_dict`` output. Unknown keys raise ``ValueError``."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; expected a subset of {sorted(known)}")
        arguments = dict(values)
        # Configs saved before these switches existed were trained with every
        # component on, so a missing switch means "on".
        for switch in _LEGACY_ON_SWITCHES:
            arguments.setdefault(switch, True)
        if "hidden_dims" in arguments:
            arguments["hidden_dims"] = tuple(int(size) for size in arguments["hidden_dims"])
        return cls(**arguments)


_LEGACY_ON_SWITCHES: tuple[str, ...] = ("use_crosses", "use_interaction")


class RankingModel(nn.Module):
    """Baseline-offset ranking model over hashed ids, user features, genres and history features.

    ``forward`` takes the dict that ``batch_to_tensors`` returns and gives logits of shape [B].
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        dim = self.config.embedding_dim
        genres = self.config.num_genres

        self.user_embedding = nn.Embedding(self.config.user_buckets, dim)
        self.item_embedding = nn.Embedding(self.config.item_buckets, dim)
        self.age_embedding = nn.Embedding(self.config.num_age_buckets, dim)
        self.gender_embedding = nn.Embedding(self.config.num_genders, dim)
        self.occupation_embedding = nn.Embedding(self.config.num_occupations, dim)
        self.genre_projection = nn.Linear(genres, dim, bias=False)

        # Wide crosses: one weight per (user feature value, genre) pair. They exist only
        # when used, because DistributedDataParallel fails on parameters without gradients.
        self.crosses = (
            nn.ModuleList(
                [
                    nn.Embedding(self.config.num_age_buckets, genres),
                    nn.Embedding(self.config.num_genders, genres),
                    nn.Embedding(self.config.num_occupations, genres),
                ]
            )
            if self.config.use_crosses
            else None
        )
        self.dense_linear = nn.Linear(self.config.num_dense, 1)

        mlp_input = 6 * dim + genres + self.config.num_dense
        layers: list[nn.Module] = []
        for hidden in self.config.hidden_dims:
            layers += [nn.Linear(mlp_input, hidden), nn.ReLU(), nn.Dropout(self.config.dropout)]
            mlp_input = hidden
        self.mlp = nn.Sequential(*layers)
        self.mlp_output = nn.Linear(mlp_input, 1)

        self._initialise()

    def _initialise(self) -> None:
        for embedding in (
            self.user_embedding,
            self.item_embedding,
            self.age_embedding,
            self.gender_embedding,
            self.occupation_embedding,
        ):
            nn.init.normal_(embedding.weight, std=0.01)
        for cross in self.crosses or []:
            nn.init.zeros_(cross.weight)
        nn.init.zeros_(self.dense_linear.weight)
        nn.init.zeros_(self.dense_linear.bias)
        nn.init.zeros_(self.mlp_output.weight)
        nn.init.zeros_(self.mlp_output.bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        genres = batch["genres"]
        # Normalise multi-hot genres so a film with many genres does not get a larger cross term.
        genre_weights = genres / genres.sum(dim=1, keepdim=True).clamp(min=1.0)

        user_vector = self.user_embedding(batch["user_bucket"])
        item_vector = self.item_embedding(batch["item_bucket"])
        age_vector = self.age_embedding(batch["age_bucket"])
        gender_vector = self.gender_embedding(batch["gender_index"])
        occupation_vector = self.occupation_embedding(batch["occupation_index"])
        genre_vector = self.genre_projection(genre_weights)

        logits = batch["prior_logit"] + self.dense_linear(batch["dense"]).squeeze(1)
        if self.crosses is not None:
            for cross, index in zip(
                self.crosses, (batch["age_bucket"], batch["gender_index"], batch["occupation_index"]), strict=True
            ):
                weights = cross(index)
                if self.config.center_crosses:
                    weights = weights - weights.mean(dim=1, keepdim=True)
                logits = logits + (weights * genre_weights).sum(dim=1)

        if self.config.use_interaction:
            user_side = user_vector + age_vector + gender_vector + occupation_vector
            item_side = item_vector + genre_vector
            logits = logits + (user_side * item_side).sum(dim=1)

        mlp_input = torch.cat(
            [
                user_vector,
                item_vector,
                age_vector,
                gender_vector,
                occupation_vector,
                genre_vector,
                genres,
                batch["dense"],
            ],
            dim=1,
        )
        deep = self.mlp_output(self.mlp(mlp_input)).squeeze(1)

        return logits + deep


def shrink_corrections(model: RankingModel, factor: float) -> None:
    """Multiply every parameter of ``model`` by ``factor`` in place, pulling it towards the baseline.

    Every parameter belongs to a correction, because the baseline's logit is an
    input. The bias and the history-feature weights scale by ``factor``, but the
    MLP's output scales by about ``factor ** (len(hidden_dims) + 1)``. A factor of
    1 leaves the model unchanged and 0 gives the untrained baseline scores.
    """
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"shrink factor must lie in [0, 1], got {factor}")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(factor)


_NUMPY_DTYPES = {torch.int64: np.int64, torch.float32: np.float32}


def batch_to_tensors(
    batch: Mapping[str, np.ndarray | torch.Tensor], *, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Convert a column batch to the tensors ``RankingModel.forward`` reads.

    ``batch`` maps ``features.FEATURE_COLUMNS`` (and optionally ``label``) to 1-D
    arrays or tensors, as a pandas slice or Ray Data's ``iter_torch_batches``
    gives them. Returns int64 categorical columns, a float32 ``genres`` [B, G],
    ``dense`` [B, D] and ``prior_logit`` [B], plus a float32 ``label`` [B] when
    the batch has labels. Raises ``KeyError`` naming any missing column.
    """
    missing = [column for column in features.FEATURE_COLUMNS if column not in batch]
    if missing:
        raise KeyError(f"batch is missing model input columns {missing}; build it with features.build_examples")

    def column(name: str, dtype: torch.dtype) -> torch.Tensor:
        values = batch[name]
        if isinstance(values, torch.Tensor):
            return values.to(device=device, dtype=dtype)
        # Copying to the target dtype also gives a writable array, which
        # torch.as_tensor needs for arrays backed by read-only Arrow buffers.
        return torch.from_numpy(np.array(values, dtype=_NUMPY_DTYPES[dtype])).to(device=device)

    tensors = {name: column(name, torch.int64) for name in features.CATEGORICAL_COLUMNS}
    tensors["genres"] = torch.stack([column(name, torch.float32) for name in features.GENRE_FEATURE_COLUMNS], dim=1)
    tensors["dense"] = torch.stack([column(name, torch.float32) for name in features.DENSE_COLUMNS], dim=1)
    tensors["prior_logit"] = column(features.PRIOR_LOGIT_COLUMN, torch.float32)
    if features.LABEL_COLUMN in batch:
        tensors["label"] = column(features.LABEL_COLUMN, torch.float32)
    if features.WEIGHT_COLUMN in batch:
        tensors["weight"] = column(features.WEIGHT_COLUMN, torch.float32)
    return tensors


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Return the binary cross-entropy of ``logits`` against 0/1 ``labels``.

    Without ``weights`` this is the plain mean. With ``weights`` it is the
    weighted mean, sum(w * loss) / sum(w).
    """
    losses = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    if weights is None:
        return losses.mean()
    weights = weights.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=torch.finfo(losses.dtype).tiny)


def model_to_bytes(model: RankingModel, config: ModelConfig) -> bytes:
    """Serialise the weights and config with ``torch.save`` (loadable with ``weights_only=True``)."""
    buffer = io.BytesIO()
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save({"config": config.to_dict(), "state_dict": state}, buffer)
    return buffer.getvalue()


def model_from_bytes(data: bytes) -> tuple[RankingModel, ModelConfig]:
    """Load a model written by ``model_to_bytes``, in eval mode on the CPU."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    config = ModelConfig.from_dict(payload["config"])
    model = RankingModel(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config


def predict_proba(model: RankingModel, examples: pd.DataFrame, *, batch_size: int = 4096) -> np.ndarray:
    """Return the probability of a positive rating for each row of ``examples`` (float64).

    Runs in eval mode without gradients and restores the model's training mode afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    outputs: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                chunk = examples.iloc[start : start + batch_size]
                batch = batch_to_tensors(
                    {name: chunk[name].to_numpy() for name in features.FEATURE_COLUMNS}, device=device
                )
                outputs.append(torch.sigmoid(model(batch)).cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)

    if not outputs:
        return np.empty(0, dtype=np.float64)
    return np.concatenate(outputs)
