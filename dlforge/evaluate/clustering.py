"""Clustering of embeddings and its scores.

k-means and agglomerative clustering are algorithms, not metrics: we cluster a model's
embeddings with them (scikit-learn's implementations) and score the clusters with the
silhouette coefficient (no labels needed), the adjusted Rand index and normalised mutual
information (against the true classes). The scores are scikit-learn's, called through thin
wrappers that also take torch tensors. Cluster ids are arbitrary, so unlike class labels they are
not range-checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn.metrics as skm

from dlforge.evaluate.metrics import ArrayLike, as_numpy


def adjusted_rand_score(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Rand index corrected for chance (Hubert & Arabie, 1985); 1 is a perfect match."""
    return float(skm.adjusted_rand_score(as_numpy(labels_true), as_numpy(labels_pred)))


def normalized_mutual_info_score(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Mutual information divided by the arithmetic mean of the two entropies."""
    return float(skm.normalized_mutual_info_score(as_numpy(labels_true), as_numpy(labels_pred)))


def silhouette_score(x: ArrayLike, labels: ArrayLike) -> float:
    """Mean of (b - a) / max(a, b) over samples, Euclidean; a sample alone in its cluster scores 0.

    A ``ValueError`` unless 2 <= clusters <= samples - 1.
    """
    return float(skm.silhouette_score(as_numpy(x), as_numpy(labels)))


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
