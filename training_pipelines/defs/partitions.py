"""Daily partitions of the ratings data."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable
from typing import Any

import dagster as dg
from dagster import DailyPartitionsDefinition

# MovieLens-100k contains events from 1997-09-20 to 1998-04-22 (UTC). A deployment on a
# live events table would set no end date, so that a new partition appears every day.
FIRST_DAY = dt.date(1997, 9, 20)
LAST_DAY = dt.date(1998, 4, 22)

daily_partitions = DailyPartitionsDefinition(
    start_date=FIRST_DAY.isoformat(),
    end_date=(LAST_DAY + dt.timedelta(days=1)).isoformat(),
    timezone="UTC",
)


def partition_day(partition_key: str) -> dt.date:
    """Parse a partition key such as ``1998-03-15``."""
    return dt.date.fromisoformat(partition_key)


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    """List every day from ``first`` to ``last``, both included."""
    return [first + dt.timedelta(days=offset) for offset in range((last - first).days + 1)]


def asset_with_backfill_policy(
    *, backfill_policy: dg.BackfillPolicy, **asset_args: Any
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """Return Dagster's ``asset`` decorator with ``backfill_policy``, without the beta notice for that parameter.

    Dagster marks ``backfill_policy`` as beta and warns on every load of the code location.
    pyproject.toml pins the Dagster version, and the tests run multi-day backfills with it,
    so users can do nothing about the notice.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning
        )
        return dg.asset(backfill_policy=backfill_policy, **asset_args)
