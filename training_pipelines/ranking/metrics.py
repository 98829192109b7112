"""Ranking and classification metrics for the next-day hold-out, in numpy only."""

import numpy as np
import pandas as pd


def _as_float_array(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; drop or fill those rows before computing metrics")
    return array


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the area under the ROC curve, with tied scores given their average rank.

    Labels are 0/1. Returns NaN when ``labels`` has only one class (or is empty),
    because the AUC is undefined there.
    """
    y = _as_float_array(labels, "labels")
    s = _as_float_array(scores, "scores")
    _check_lengths(labels=y, scores=s)

    positives = float(y.sum())
    negatives = float(len(y) - positives)
    if positives == 0 or negatives == 0:
        return float("nan")

    # Mann-Whitney U: sum of the positives' ranks, with average ranks for ties.
    ranks = pd.Series(s).rank(method="average").to_numpy()
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Return the mean binary cross-entropy, with probabilities clipped to [eps, 1 - eps]."""
    y = _as_float_array(labels, "labels")
    p = np.clip(_as_float_array(probs, "probs"), eps, 1.0 - eps)
    _check_lengths(labels=y, probs=p)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def _ranked_per_user(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Return rows sorted by user and descending score, with a 0-based ``rank`` per user.

    Tied scores keep their input order, so the result is deterministic.
    """
    y = _as_float_array(labels, "labels")
    s = _as_float_array(scores, "scores")
    users = np.asarray(user_ids).reshape(-1)
    _check_lengths(user_ids=users, labels=y, scores=s)

    frame = pd.DataFrame({"user_id": users, "label": y, "score": s})
    frame = frame.sort_values(["user_id", "score"], ascending=[True, False], kind="stable")
    frame["rank"] = frame.groupby("user_id").cumcount()
    return frame


def ndcg_at_k(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, *, k: int = 10) -> float:
    """Return NDCG@k with binary relevance, averaged over users with at least one positive.

    Each user's hold-out rows are ranked by score. The ideal ranking puts all of
    that user's positives first. Returns NaN when no user has a positive.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    frame = _ranked_per_user(user_ids, labels, scores)

    discount = 1.0 / np.log2(frame["rank"].to_numpy() + 2.0)
    frame["gain"] = np.where(frame["rank"] < k, frame["label"] * discount, 0.0)
    per_user = frame.groupby("user_id").agg(dcg=("gain", "sum"), positives=("label", "sum"))
    per_user = per_user[per_user["positives"] > 0]
    if per_user.empty:
        return float("nan")

    ideal_discounts = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
    ideal_count = np.minimum(per_user["positives"].to_numpy(), k).astype(np.int64)
    ideal_dcg = ideal_discounts[ideal_count - 1]
    return float(np.mean(per_user["dcg"].to_numpy() / ideal_dcg))


def hit_rate_at_k(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, *, k: int = 10) -> float:
    """Return the share of users with at least one positive that have a positive in their top k.

    Returns NaN when no user has a positive.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    frame = _ranked_per_user(user_ids, labels, scores)

    frame["top_positive"] = (frame["rank"] < k) & (frame["label"] > 0)
    per_user = frame.groupby("user_id").agg(hit=("top_positive", "max"), positives=("label", "sum"))
    per_user = per_user[per_user["positives"] > 0]
    if per_user.empty:
        return float("nan")
    return float(per_user["hit"].mean())


def evaluate(labels: np.ndarray, scores: np.ndarray, user_ids: np.ndarray) -> dict[str, float]:
    """Return AUC, log loss, NDCG@10, hit rate@10, row count and positive count.

    ``scores`` must be probabilities, because log loss reads them as such.
    """
    y = _as_float_array(labels, "labels")
    return {
        "auc": roc_auc(y, scores),
        "log_loss": log_loss(y, scores),
        "ndcg_at_10": ndcg_at_k(user_ids, y, scores, k=10),
        "hit_rate_at_10": hit_rate_at_k(user_ids, y, scores, k=10),
        "rows": float(len(y)),
        "positives": float(y.sum()),
    }
