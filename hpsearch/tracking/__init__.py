"""Tracking: MLflow runs of a study (one experiment per study, one parent run per invocation,
one nested run per trial), figures, the study report and provenance.

Names are imported on first use: ``hpsearch.tracking.tables`` needs neither torch nor MLflow.
"""

from hpsearch._imports import lazy_exports

_EXPORTS = {
    "CHECKPOINT_PATH": "runs", "RUN_STATUS": "runs", "StudyTracker": "runs",
    "TrialRun": "runs", "close_orphaned_trial_run": "runs", "log_confusion": "runs",
    "log_figure": "runs",
    "dataset_inputs": "provenance", "provenance_tags": "provenance",
    "resolve_tracking_uri": "provenance", "using_tracking_uri": "provenance",
    "confusion_matrix_figure": "figures", "image_grid_figure": "figures",
    "learning_curves_figure": "figures",
    "STUDY_PLOTS": "report", "log_prediction_grid": "report", "log_study_report": "report",
    "leaderboard": "tables", "study_overview": "tables", "trials_table": "tables",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
