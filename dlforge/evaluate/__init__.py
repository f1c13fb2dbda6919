"""Evaluation: classification metrics, threshold curves, calibration and clustering scores."""

from dlforge.evaluate.clustering import (
    adjusted_rand_score,
    cluster_embeddings,
    normalized_mutual_info_score,
    silhouette_score,
)
from dlforge.evaluate.evaluate import (
    EvalConfig,
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

__all__ = [
    "EvalConfig",
    "Predictions",
    "accuracy_score",
    "adjusted_rand_score",
    "average_precision_ovr",
    "average_precision_score",
    "balanced_accuracy_score",
    "classification_report",
    "cluster_embeddings",
    "confusion_matrix",
    "evaluate_model",
    "expected_calibration_error",
    "log_loss",
    "normalized_mutual_info_score",
    "precision_recall_curve",
    "precision_recall_f1",
    "predict",
    "reliability_bins",
    "roc_auc_binary",
    "roc_auc_ovr",
    "roc_curve",
    "silhouette_score",
]
