"""Search: the study, the objective, the training loop, MLflow tracking and registration."""

from hpsearch.search.study import RunConfig, StudySummary, run_study
from hpsearch.search.train import EpochResult, EvalResult, TrainingDiverged, evaluate, fit

__all__ = [
    "EpochResult",
    "EvalResult",
    "RunConfig",
    "StudySummary",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "run_study",
]
