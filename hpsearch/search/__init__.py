"""Search: the study runner, the objective, coordination of workers and ``--jobs`` worker
processes.

Names are imported on first use, so importing this package loads no torch.
"""

from hpsearch._imports import lazy_exports

_EXPORTS = {
    "DEFAULT_STORAGE": "config", "RunConfig": "config", "StudySummary": "config",
    "register_study": "study", "run_study": "study",
    "StudyRunner": "runner", "default_jobs": "runner",
    "Objective": "objective", "TrialData": "objective",
    "Reporter": "progress", "format_params": "progress",
    "load_existing_study": "storage", "open_study": "storage",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
