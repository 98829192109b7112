"""Settings of the ranking model's training and promotion, shared by every run."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from resources.errors import InvalidRequestError
from training_pipelines.ranking.train_plain import TrainingHyperparameters

_DEFAULTS = TrainingHyperparameters()


class RankingSettings(ConfigurableResource):  # type: ignore[type-arg]
    """Settings of the ranking model's training and of when a new model may replace the champion."""

    window_days: int = Field(default=28, description="Days of events the model trains on, ending at the partition day.")
    epochs: int = Field(default=_DEFAULTS.epochs, description="Passes over the training window.")
    batch_size: int = Field(default=_DEFAULTS.batch_size, description="Examples per batch and worker.")
    learning_rate: float = Field(default=_DEFAULTS.learning_rate, description="Adam learning rate.")
    warm_start_epochs: int = Field(
        default=_DEFAULTS.warm_start_epochs,
        description="Passes over the window when training starts from the previous day's model.",
    )
    warm_start_shrink: float = Field(
        default=_DEFAULTS.warm_start_shrink,
        description="Factor in [0, 1] that pulls the previous day's corrections toward the popularity baseline.",
    )
    auc_margin: float = Field(
        default=0.01,
        description="The model is not promoted when its AUC is more than this below the popularity baseline's.",
    )
    max_failures: int = Field(
        default=2, description="Worker-group restarts Ray Train may make from the last checkpoint."
    )
    cluster_loss_retries: int = Field(
        default=1,
        description="Times the training step starts a new cluster and resumes from the last checkpoint "
        "after its cluster was lost (the head node died, or stopped answering).",
    )
    seed: int = Field(default=0, description="Seed of weight initialisation and shuffling.")

    def validate_settings(self) -> None:
        """Raise InvalidRequestError naming the first invalid setting."""
        positive = {
            "window_days": self.window_days,
            "epochs": self.epochs,
            "warm_start_epochs": self.warm_start_epochs,
            "batch_size": self.batch_size,
        }
        for field, value in positive.items():
            if value < 1:
                raise InvalidRequestError(
                    f"ranking_settings.{field}", f"must be at least 1, got {value}", "Use a positive value."
                )
        if not 0 < self.learning_rate < 1:
            raise InvalidRequestError(
                "ranking_settings.learning_rate",
                f"must lie in (0, 1), got {self.learning_rate}",
                "Use a value such as 0.003.",
            )
        if not 0 <= self.warm_start_shrink <= 1:
            raise InvalidRequestError(
                "ranking_settings.warm_start_shrink",
                f"must lie in [0, 1], got {self.warm_start_shrink}",
                "Use 1 to keep yesterday's weights as they are, 0 to start from the baseline.",
            )
        for field, value in {
            "max_failures": self.max_failures,
            "cluster_loss_retries": self.cluster_loss_retries,
        }.items():
            if value < 0:
                raise InvalidRequestError(
                    f"ranking_settings.{field}", f"must be 0 or more, got {value}", "Use 0 to never retry."
                )
        if self.auc_margin < 0:
            raise InvalidRequestError(
                "ranking_settings.auc_margin", f"must be 0 or more, got {self.auc_margin}", "Use a value such as 0.01."
            )
