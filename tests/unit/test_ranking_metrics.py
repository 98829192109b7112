import math

import numpy as np
import pytest

from training_pipelines.ranking import metrics


def test_auc_perfect_and_reversed() -> None:
    labels = np.array([0, 0, 1, 1])

    assert metrics.roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(1.0)
    assert metrics.roc_auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == pytest.approx(0.0)


def test_auc_counts_ties_as_half() -> None:
    # Pairs (positive, negative): (0.5, 0.1) win, (0.5, 0.5) tie, (0.9, 0.1) win,
    # (0.9, 0.5) win, so AUC = (3 + 0.5) / 4.
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.5, 0.5, 0.9])

    assert metrics.roc_auc(labels, scores) == pytest.approx(0.875)


def test_auc_all_tied_is_half() -> None:
    assert metrics.roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == pytest.approx(0.5)


def test_auc_one_class_is_nan() -> None:
    assert math.isnan(metrics.roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(metrics.roc_auc(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(metrics.roc_auc(np.zeros(0), np.zeros(0)))


def test_auc_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length"):
        metrics.roc_auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_log_loss_hand_computed() -> None:
    labels = np.array([1, 0])
    probs = np.array([0.8, 0.4])
    expected = -(math.log(0.8) + math.log(0.6)) / 2

    assert metrics.log_loss(labels, probs) == pytest.approx(expected)


def test_log_loss_clips_certain_mistakes() -> None:
    value = metrics.log_loss(np.array([1.0]), np.array([0.0]), eps=1e-7)

    assert value == pytest.approx(-math.log(1e-7))


def test_ndcg_hand_computed() -> None:
    # User 1 ranks items by score as [neg, pos, pos]: DCG = 1/log2(3) + 1/log2(4),
    # IDCG = 1 + 1/log2(3). User 2 has its only positive first: NDCG 1.
    # User 3 has no positive and is skipped.
    user_ids = np.array([1, 1, 1, 2, 2, 3])
    labels = np.array([0, 1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.4, 0.8, 0.1, 0.7])
    user_1 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))

    assert metrics.ndcg_at_k(user_ids, labels, scores, k=10) == pytest.approx((user_1 + 1.0) / 2)


def test_ndcg_cuts_at_k() -> None:
    # With k=1 user 1's top item is negative (0) and user 2's is positive (1).
    user_ids = np.array([1, 1, 1, 2, 2])
    labels = np.array([0, 1, 1, 1, 0])
    scores = np.array([0.9, 0.5, 0.4, 0.8, 0.1])

    assert metrics.ndcg_at_k(user_ids, labels, scores, k=1) == pytest.approx(0.5)


def test_hit_rate_hand_computed() -> None:
    user_ids = np.array([1, 1, 1, 2, 2, 3])
    labels = np.array([0, 1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.4, 0.8, 0.1, 0.7])

    assert metrics.hit_rate_at_k(user_ids, labels, scores, k=1) == pytest.approx(0.5)
    assert metrics.hit_rate_at_k(user_ids, labels, scores, k=2) == pytest.approx(1.0)


def test_ranking_metrics_without_positives_are_nan() -> None:
    user_ids = np.array([1, 2])
    labels = np.array([0, 0])
    scores = np.array([0.3, 0.4])

    assert math.isnan(metrics.ndcg_at_k(user_ids, labels, scores))
    assert math.isnan(metrics.hit_rate_at_k(user_ids, labels, scores))


def test_evaluate_returns_all_keys() -> None:
    user_ids = np.array([1, 1, 2, 2])
    labels = np.array([1, 0, 0, 1])
    scores = np.array([0.9, 0.2, 0.3, 0.6])

    result = metrics.evaluate(labels, scores, user_ids)

    assert set(result) == {"auc", "log_loss", "ndcg_at_10", "hit_rate_at_10", "rows", "positives"}
    assert result["auc"] == pytest.approx(1.0)
    assert result["ndcg_at_10"] == pytest.approx(1.0)
    assert result["hit_rate_at_10"] == pytest.approx(1.0)
    assert result["rows"] == 4
    assert result["positives"] == 2
