"""Study specs: one YAML per built-in study, their validating loader and JSON Schema, and the
registry of Optuna samplers and pruners. Loads no torch."""

from hpsearch.params import HYPERPARAMETERS
from hpsearch.studies.builtin import (
    builtin_spec_names,
    builtin_spec_text,
    load_builtin_spec,
    own_images_spec,
)
from hpsearch.studies.space import ParamSpec
from hpsearch.studies.spec import ImageSettings, SpecError, StudySpec, load_spec, spec_schema

__all__ = [
    "HYPERPARAMETERS",
    "ImageSettings",
    "ParamSpec",
    "SpecError",
    "StudySpec",
    "builtin_spec_names",
    "builtin_spec_text",
    "load_builtin_spec",
    "load_spec",
    "own_images_spec",
    "spec_schema",
]
