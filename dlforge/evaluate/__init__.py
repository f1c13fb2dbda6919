"""Evaluation: classification metrics (scikit-learn's), calibration and clustering scores."""

from typing import TYPE_CHECKING

from dlforge._lazy import lazy_exports

if TYPE_CHECKING:
    from dlforge.evaluate.clustering import (
        adjusted_rand_score,
        cluster_embeddings,
        normalized_mutual_info_score,
        silhouette_score,
    )
    from dlforge.evaluate.config import EvalConfig
    from dlforge.evaluate.evaluate import (
        Predictions,
        classification_report,
        evaluate_model,
        predict,
    )
    from dlforge.evaluate.metrics import (
        accuracy_score,
        average_precision_ovr,
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        expected_calibration_error,
        log_loss,
        precision_recall_curve,
        precision_recall_f1,
        reliability_bins,
        roc_auc_binary,
        roc_auc_ovr,
        roc_curve,
    )

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "clustering": [
            "adjusted_rand_score",
            "cluster_embeddings",
            "normalized_mutual_info_score",
            "silhouette_score",
        ],
        "config": ["EvalConfig"],
        "evaluate": ["Predictions", "classification_report", "evaluate_model", "predict"],
        "metrics": [
            "accuracy_score",
            "average_precision_ovr",
            "average_precision_score",
            "balanced_accuracy_score",
            "confusion_matrix",
            "expected_calibration_error",
            "log_loss",
            "precision_recall_curve",
            "precision_recall_f1",
            "reliability_bins",
            "roc_auc_binary",
            "roc_auc_ovr",
            "roc_curve",
        ],
    },
)
