"""Build model inputs for the rating ranking model from MovieLens-style tables.

The events table has columns ``user_id, item_id, rating, timestamp`` (unix seconds,
UTC) and may also carry a ``day`` column. Days are always derived from
``timestamp``, so a ``day`` column is ignored.

Every shape the model depends on (hash bucket counts, category vocabularies, the
number of genre and dense columns) is a constant of this module. No shape depends
on the data, so a model trained on one window can warm-start on the next.
"""

import datetime
from collections.abc import Sequence

import numpy as np
import pandas as pd

POSITIVE_RATING = 4
"""A rating of at least this value is a positive label."""

GENRE_COLUMNS: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""Genre columns of the items table, each 0 or 1."""

OCCUPATIONS: tuple[str, ...] = (
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
)
"""Occupations of the MovieLens-100k users table. Index 0 is kept for missing or other values."""

GENDERS: tuple[str, ...] = ("M", "F")

AGE_BUCKET_EDGES: tuple[int, ...] = (18, 25, 35, 45, 50, 56)
"""Lower edges of the age buckets after the first, as in the MovieLens-1M age groups."""

USER_HASH_BUCKETS = 2048
ITEM_HASH_BUCKETS = 4096
"""Embedding table sizes for hashed ids. Bucket 0 is the unknown bucket."""

MIN_USER_HISTORY = 5
MIN_ITEM_HISTORY = 5
"""Ids with fewer earlier events than this map to the unknown bucket 0."""

NUM_AGE_BUCKETS = len(AGE_BUCKET_EDGES) + 2
NUM_GENDERS = len(GENDERS) + 1
NUM_OCCUPATIONS = len(OCCUPATIONS) + 1
"""Vocabulary sizes including index 0 for a missing or unknown value."""

DEFAULT_POPULARITY_ALPHA = 10.0
"""Pseudo-count that shrinks an item's positive rate towards the global rate."""

DEFAULT_GLOBAL_POSITIVE_RATE = 0.55
"""Prior positive rate used when a history has no events (MovieLens-100k overall rate is 0.554)."""

USER_RESIDUAL_ALPHA = 5.0
"""Pseudo-count that shrinks a user's mean residual towards 0."""

USER_WEIGHT_POWER = 0.5
"""Training rows of a user weigh ``rows_of_user ** -USER_WEIGHT_POWER`` (before scaling to mean 1).

A few heavy raters write most of a day's ratings. Without down-weighting, the
user-feature x genre crosses mostly learn those few people's tastes. They then
pass them on to the next day's (mostly new) users of the same age, gender and
occupation.
"""

RECENT_DAYS = 7
"""Length of the trailing window for the recent-count features, in days."""

_SECONDS_PER_DAY = 86_400
_EPOCH = datetime.date(1970, 1, 1)
_HASH_MULTIPLIER = 2_654_435_761  # Knuth's multiplicative hash constant.
_PROBABILITY_CLIP = 1e-4


def _genre_feature_name(genre: str) -> str:
    """Return the column name of a genre, such as "genre_sci_fi" for "Sci-Fi"."""
    slug = "".join(character if character.isalnum() else "_" for character in genre.lower().replace("'", ""))
    return "genre_" + slug.strip("_")


CATEGORICAL_COLUMNS: tuple[str, ...] = (
    "user_bucket",
    "item_bucket",
    "age_bucket",
    "gender_index",
    "occupation_index",
)
"""Integer model inputs, each an index into an embedding table."""

GENRE_FEATURE_COLUMNS: tuple[str, ...] = tuple(_genre_feature_name(genre) for genre in GENRE_COLUMNS)
"""Float 0/1 genre indicators in the order of ``GENRE_COLUMNS``."""

DENSE_COLUMNS: tuple[str, ...] = (
    "item_log_count",
    "item_log_recent_count",
    "item_positive_rate",
    "item_mean_rating",
    "user_log_count",
    "user_log_recent_count",
    "user_positive_rate",
    "user_mean_rating",
    "user_residual",
)
"""Float history features. Counts are log1p, rates are smoothed, mean ratings are centred on 3.

``user_residual`` is 4 times the user's mean of (label - item baseline) over
earlier events, shrunk towards 0 with ``USER_RESIDUAL_ALPHA``.
"""

PRIOR_LOGIT_COLUMN = "item_prior_logit"
"""Logit of the popularity baseline for the row, which the model adds as an offset."""

FEATURE_COLUMNS: tuple[str, ...] = CATEGORICAL_COLUMNS + GENRE_FEATURE_COLUMNS + DENSE_COLUMNS + (PRIOR_LOGIT_COLUMN,)
"""Columns the model reads from an examples frame."""

LABEL_COLUMN = "label"
WEIGHT_COLUMN = "weight"
ID_COLUMNS: tuple[str, ...] = ("user_id", "item_id")
EXAMPLE_COLUMNS: tuple[str, ...] = ID_COLUMNS + FEATURE_COLUMNS + (LABEL_COLUMN, WEIGHT_COLUMN)
"""All columns of the frame that ``build_examples`` returns, in order."""


def day_numbers(timestamps: pd.Series) -> np.ndarray:
    """Return the UTC day of each timestamp as days since 1970-01-01 (int64).

    Accepts unix seconds or a datetime64 column. Naive datetimes are taken as UTC.
    """
    if pd.api.types.is_datetime64_any_dtype(timestamps):
        utc = pd.to_datetime(timestamps, utc=True)
        elapsed = utc - pd.Timestamp(0, tz="UTC")
        return np.asarray(elapsed // pd.Timedelta(days=1), dtype=np.int64)
    return np.asarray(timestamps, dtype=np.int64) // _SECONDS_PER_DAY


def date_to_day_number(day: datetime.date) -> int:
    """Return ``day`` as days since 1970-01-01. A datetime counts by its date part."""
    if isinstance(day, datetime.datetime):
        day = day.date()
    return (day - _EPOCH).days


def hash_ids(ids: np.ndarray, num_buckets: int) -> np.ndarray:
    """Map ids to buckets 1 .. num_buckets - 1 with a multiplicative hash, keeping 0 free."""
    values = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    hashed = (values * np.uint64(_HASH_MULTIPLIER)) % np.uint64(2**32)
    return (hashed % np.uint64(num_buckets - 1)).astype(np.int64) + 1


def _logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(probabilities, _PROBABILITY_CLIP, 1.0 - _PROBABILITY_CLIP)
    return np.log(clipped / (1.0 - clipped))


class _CumulativeSums:
    """Running sums of per-event values for each key by day, queried for "all days before d".

    The events are aggregated once into sorted (key, day) rows with running sums,
    so a lookup for many rows is one ``searchsorted`` instead of a scan per row.
    """

    def __init__(self, keys: np.ndarray, days: np.ndarray, values: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        days = np.asarray(days, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64).reshape(len(keys), -1)
        self._width = values.shape[1]

        value_columns = [f"value_{index}" for index in range(self._width)]
        frame = pd.DataFrame(values, columns=value_columns)
        frame["key"] = keys
        frame["day"] = days
        daily = frame.groupby(["key", "day"], sort=True)[value_columns].sum().reset_index()
        running = daily.groupby("key")[value_columns].cumsum()

        daily_keys = daily["key"].to_numpy(dtype=np.int64)
        daily_days = daily["day"].to_numpy(dtype=np.int64)
        self._unique_keys, key_codes = np.unique(daily_keys, return_inverse=True)
        self._min_day = int(daily_days.min()) if len(daily_days) else 0
        self._day_stride = int(daily_days.max()) - self._min_day + 2 if len(daily_days) else 2
        # (key code, day) packed into one sorted int64, so a query is a single searchsorted.
        self._packed = key_codes.astype(np.int64) * self._day_stride + (daily_days - self._min_day)
        self._sums = running.to_numpy(dtype=np.float64)

    def before(self, keys: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Return the sums [n, width] over each key's events on days strictly before ``days``."""
        keys = np.asarray(keys, dtype=np.int64)
        days = np.asarray(days, dtype=np.int64)
        result = np.zeros((len(keys), self._width), dtype=np.float64)
        if len(self._unique_keys) == 0 or len(keys) == 0:
            return result

        code = np.minimum(np.searchsorted(self._unique_keys, keys), len(self._unique_keys) - 1)
        known = self._unique_keys[code] == keys

        # Clipping keeps each query inside its key's range: a day at or before the
        # first history day finds nothing earlier, and a day after the last one
        # finds the key's final running sum.
        offset = np.clip(days - self._min_day, 0, self._day_stride - 1)
        position = np.searchsorted(self._packed, code * self._day_stride + offset, side="left") - 1
        safe_position = np.maximum(position, 0)
        same_key = (position >= 0) & (self._packed[safe_position] // self._day_stride == code)
        valid = known & same_key

        result[valid] = self._sums[safe_position[valid]]
        return result


def _global_positive_rate(positives: np.ndarray, counts: np.ndarray) -> np.ndarray:
    rate = np.full(len(counts), DEFAULT_GLOBAL_POSITIVE_RATE, dtype=np.float64)
    seen = counts > 0
    rate[seen] = positives[seen] / counts[seen]
    return rate


def _smoothed_rate(positives: np.ndarray, counts: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    return (positives + alpha * prior) / (counts + alpha)


def popularity_scores(
    history: pd.DataFrame, item_ids: np.ndarray, *, alpha: float = DEFAULT_POPULARITY_ALPHA
) -> np.ndarray:
    """Return the popularity baseline probability of a positive rating for each item.

    The score is the item's share of ratings >= 4 in ``history``, smoothed towards
    the global share: ``(positives + alpha * global_rate) / (count + alpha)``. Items
    without history get the global share, and an empty history gives
    ``DEFAULT_GLOBAL_POSITIVE_RATE``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")

    ratings = history["rating"].to_numpy()
    positive = ratings >= POSITIVE_RATING
    global_rate = positive.mean() if len(ratings) else DEFAULT_GLOBAL_POSITIVE_RATE

    per_item = (
        pd.DataFrame({"item_id": history["item_id"].to_numpy(), "positive": positive})
        .groupby("item_id")["positive"]
        .agg(["sum", "count"])
    )
    position = per_item.index.get_indexer(np.asarray(item_ids))
    found = position >= 0
    positives = np.where(found, per_item["sum"].to_numpy(dtype=np.float64)[position], 0.0)
    counts = np.where(found, per_item["count"].to_numpy(dtype=np.float64)[position], 0.0)
    return (positives + alpha * global_rate) / (counts + alpha)


def _lookup_users(users: pd.DataFrame, user_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Return age bucket, gender index and occupation index per user id, 0 where unknown."""
    table = users.drop_duplicates("user_id").set_index("user_id")
    position = table.index.get_indexer(user_ids)
    found = position >= 0
    safe_position = np.where(found, position, 0)

    ages = pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=np.float64)
    age_values = ages[safe_position] if len(table) else np.full(len(user_ids), np.nan)
    age_bucket = np.searchsorted(np.asarray(AGE_BUCKET_EDGES), age_values, side="right") + 1
    age_bucket = np.where(found & ~np.isnan(age_values), age_bucket, 0)

    def vocabulary_index(column: str, vocabulary: tuple[str, ...]) -> np.ndarray:
        codes = pd.Index(vocabulary).get_indexer(table[column].astype("string").str.strip()) + 1
        codes = np.maximum(codes, 0)
        return np.where(found, codes[safe_position] if len(table) else 0, 0)

    return {
        "age_bucket": age_bucket.astype(np.int64),
        "gender_index": vocabulary_index("gender", GENDERS).astype(np.int64),
        "occupation_index": vocabulary_index("occupation", OCCUPATIONS).astype(np.int64),
    }


def _lookup_genres(items: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Return a float32 [n, len(GENRE_COLUMNS)] genre matrix, all zeros for unknown items."""
    table = items.drop_duplicates("item_id").set_index("item_id")
    missing = [genre for genre in GENRE_COLUMNS if genre not in table.columns]
    if missing:
        raise ValueError(f"items table is missing genre columns {missing}; expected all of {list(GENRE_COLUMNS)}")

    position = table.index.get_indexer(item_ids)
    found = position >= 0
    genres = table[list(GENRE_COLUMNS)].fillna(0).to_numpy(dtype=np.float32)
    result = np.zeros((len(item_ids), len(GENRE_COLUMNS)), dtype=np.float32)
    result[found] = genres[position[found]]
    return result


def _history_features(
    prefix: str,
    sums_before: np.ndarray,
    recent_sums_before: np.ndarray,
    global_rate: np.ndarray,
    alpha: float,
) -> dict[str, np.ndarray]:
    """Return the dense history features named ``{prefix}_*`` from (count, positives, rating sum) rows."""
    counts, positives, rating_sums = sums_before[:, 0], sums_before[:, 1], sums_before[:, 2]
    recent_counts = counts - recent_sums_before[:, 0]

    # The mean rating is shrunk towards 3 (the middle of the scale) and centred,
    # so a key with no history gets 0.
    mean_rating = (rating_sums + alpha * 3.0) / (counts + alpha) - 3.0
    return {
        f"{prefix}_log_count": np.log1p(counts),
        f"{prefix}_log_recent_count": np.log1p(recent_counts),
        f"{prefix}_positive_rate": _smoothed_rate(positives, counts, global_rate, alpha),
        f"{prefix}_mean_rating": mean_rating,
    }


def _user_weights(user_ids: np.ndarray) -> np.ndarray:
    """Return float32 row weights ``rows_of_user ** -USER_WEIGHT_POWER``, scaled to mean 1."""
    _, inverse, counts = np.unique(user_ids, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -USER_WEIGHT_POWER
    return (weights / weights.mean()).astype(np.float32)


def _empty_examples() -> pd.DataFrame:
    columns: dict[str, np.ndarray] = {}
    for column in EXAMPLE_COLUMNS:
        dtype = np.int64 if column in ID_COLUMNS or column in CATEGORICAL_COLUMNS else np.float32
        columns[column] = np.empty(0, dtype=dtype)
    return pd.DataFrame(columns)


def build_examples(
    history: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    *,
    days: Sequence[datetime.date],
    alpha: float = DEFAULT_POPULARITY_ALPHA,
) -> pd.DataFrame:
    """Build one example row per event of ``history`` whose UTC day is in ``days``.

    History features of a row on day d use only events of ``history`` on days
    strictly before d, so a row never uses its own label. To score day D + 1, pass
    a history that contains D + 1's events and ``days=[D + 1]``: the features then
    use every event up to and including D.

    Returns the columns ``EXAMPLE_COLUMNS``: int64 ids and buckets, float32
    features, a float32 ``label`` (1.0 when rating >= 4) and a float32 training
    ``weight`` that depends on how many of the returned rows belong to the same
    user (see ``USER_WEIGHT_POWER``). Rows keep the order of ``history``. A day without
    events contributes no rows, and no matching events give an empty frame with the
    same columns and dtypes.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")

    all_days = day_numbers(history["timestamp"])
    all_users = history["user_id"].to_numpy(dtype=np.int64)
    all_items = history["item_id"].to_numpy(dtype=np.int64)
    all_ratings = history["rating"].to_numpy(dtype=np.float64)

    requested_days = np.array([date_to_day_number(day) for day in days], dtype=np.int64)
    selected = np.isin(all_days, requested_days)
    if not selected.any():
        return _empty_examples()

    # Item features are needed for every history event, not only the selected
    # ones, because each user's residual sums the earlier events' residuals.
    event_values = np.column_stack([np.ones(len(all_ratings)), all_ratings >= POSITIVE_RATING, all_ratings])
    global_sums = _CumulativeSums(np.zeros(len(all_days), dtype=np.int64), all_days, event_values)
    global_before = global_sums.before(np.zeros(len(all_days), dtype=np.int64), all_days)
    all_global_rate = _global_positive_rate(global_before[:, 1], global_before[:, 0])

    item_sums = _CumulativeSums(all_items, all_days, event_values)
    item_before = item_sums.before(all_items, all_days)
    all_item_features = _history_features(
        "item", item_before, item_sums.before(all_items, all_days - RECENT_DAYS), all_global_rate, alpha
    )
    all_item_counts = item_before[:, 0]

    # Residual of each event against the popularity baseline of its own day. A
    # user's mean residual measures how much more (or less) they like items than
    # other users did, after allowing for how well liked the chosen items are.
    residuals = (all_ratings >= POSITIVE_RATING) - all_item_features["item_positive_rate"]
    user_sums = _CumulativeSums(all_users, all_days, np.column_stack([event_values, residuals]))

    row_days = all_days[selected]
    user_ids = all_users[selected]
    item_ids = all_items[selected]
    ratings = all_ratings[selected]
    global_rate = all_global_rate[selected]
    item_features = {name: values[selected] for name, values in all_item_features.items()}
    item_counts = all_item_counts[selected]

    user_before = user_sums.before(user_ids, row_days)
    user_features = _history_features(
        "user", user_before, user_sums.before(user_ids, row_days - RECENT_DAYS), global_rate, alpha
    )
    user_counts = user_before[:, 0]
    # Scaled by 4, the slope of the logit at p = 0.5, so the feature is roughly in logit units.
    user_features["user_residual"] = 4.0 * user_before[:, 3] / (user_counts + USER_RESIDUAL_ALPHA)

    user_bucket = np.where(user_counts >= MIN_USER_HISTORY, hash_ids(user_ids, USER_HASH_BUCKETS), 0)
    item_bucket = np.where(item_counts >= MIN_ITEM_HISTORY, hash_ids(item_ids, ITEM_HASH_BUCKETS), 0)

    columns: dict[str, np.ndarray] = {
        "user_id": user_ids,
        "item_id": item_ids,
        "user_bucket": user_bucket.astype(np.int64),
        "item_bucket": item_bucket.astype(np.int64),
    }
    columns.update(_lookup_users(users, user_ids))

    genres = _lookup_genres(items, item_ids)
    for index, column in enumerate(GENRE_FEATURE_COLUMNS):
        columns[column] = genres[:, index]

    dense = {**item_features, **user_features}
    for column in DENSE_COLUMNS:
        columns[column] = dense[column].astype(np.float32)
    columns[PRIOR_LOGIT_COLUMN] = _logit(item_features["item_positive_rate"]).astype(np.float32)
    columns[LABEL_COLUMN] = (ratings >= POSITIVE_RATING).astype(np.float32)
    columns[WEIGHT_COLUMN] = _user_weights(user_ids)

    return pd.DataFrame({column: columns[column] for column in EXAMPLE_COLUMNS})
