"""Study specs: one YAML per built-in study and the loader that validates them."""

from hpsearch.studies.spec import (
    HYPERPARAMETERS,
    ParamSpec,
    SpecError,
    StudySpec,
    builtin_spec_names,
    load_builtin_spec,
    load_spec,
)

__all__ = [
    "HYPERPARAMETERS",
    "ParamSpec",
    "SpecError",
    "StudySpec",
    "builtin_spec_names",
    "load_builtin_spec",
    "load_spec",
]
