"""Clustering of embeddings and its scores.

k-means and agglomerative clustering are algorithms, not metrics: we cluster a model's
embeddings with them (scikit-learn's implementations) and score the clusters with the
silhouette coefficient (no labels needed), the adjusted Rand index and normalised mutual
information (against the true classes). The scores are our NumPy code, checked against
scikit-learn in the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table


def _comb2(n: np.ndarray | float) -> np.ndarray | float:
    return n * (n - 1) / 2.0


def adjusted_rand_score(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Rand index corrected for chance (Hubert & Arabie, 1985); 1 is a perfect match."""
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    n = len(labels_true)
    c = _contingency(labels_true, labels_pred)
    n_classes, n_clusters = c.shape
    if n_classes == n_clusters == 1 or n_classes == n_clusters == n:
        return 1.0  # both trivial partitions agree
    sum_cells = float(np.sum(_comb2(c.astype(np.float64))))
    sum_rows = float(np.sum(_comb2(c.sum(axis=1).astype(np.float64))))
    sum_cols = float(np.sum(_comb2(c.sum(axis=0).astype(np.float64))))
    expected = sum_rows * sum_cols / float(_comb2(float(n)))
    maximum = (sum_rows + sum_cols) / 2.0
    if maximum == expected:
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def normalized_mutual_info_score(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Mutual information divided by the arithmetic mean of the two entropies."""
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    c = _contingency(labels_true, labels_pred).astype(np.float64)
    if c.shape[0] == c.shape[1] == 1:
        return 1.0
    n = c.sum()
    pij = c / n
    outer = np.outer(pij.sum(axis=1), pij.sum(axis=0))
    nz = pij > 0
    mi = float(np.sum(pij[nz] * np.log(pij[nz] / outer[nz])))
    if mi <= 0:
        return 0.0
    return mi / ((_entropy(labels_true) + _entropy(labels_pred)) / 2.0)


def silhouette_score(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean of (b - a) / max(a, b) over samples; a sample alone in its cluster scores 0."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.unique(np.asarray(labels), return_inverse=True)[1]
    k = labels.max() + 1
    if not 2 <= k <= len(x) - 1:
        raise ValueError(f"silhouette needs 2 <= clusters <= samples - 1, got {k} clusters")
    sq = np.sum(x * x, axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    np.fill_diagonal(dist, 0.0)
    onehot = np.eye(k)[labels]
    sums = dist @ onehot  # (N, K): total distance from each sample to each cluster
    sizes = onehot.sum(axis=0)
    own = sizes[labels]
    a = np.where(own > 1, sums[np.arange(len(x)), labels] / np.maximum(own - 1, 1), 0.0)
    mean_other = sums / sizes
    mean_other[np.arange(len(x)), labels] = np.inf
    b = mean_other.min(axis=1)
    s = np.where(own > 1, (b - a) / np.maximum(a, b), 0.0)
    return float(np.mean(s))


def cluster_embeddings(
    embeddings: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int = 0
) -> dict[str, Any]:
    """k-means and agglomerative (Ward) clusterings of ``embeddings``, each with its scores."""
    from sklearn.cluster import AgglomerativeClustering, KMeans

    results: dict[str, Any] = {}
    algorithms = {
        "kmeans": KMeans(n_clusters=n_clusters, n_init=10, random_state=seed),
        "agglomerative": AgglomerativeClustering(n_clusters=n_clusters, linkage="ward"),
    }
    for name, algo in algorithms.items():
        assigned = algo.fit_predict(embeddings)
        results[name] = {
            "silhouette_score": silhouette_score(embeddings, assigned)
            if 2 <= len(np.unique(assigned)) < len(embeddings)
            else float("nan"),
            "adjusted_rand_score": adjusted_rand_score(labels, assigned),
            "normalized_mutual_info_score": normalized_mutual_info_score(labels, assigned),
        }
    return results
