"""The studies shipped with hpsearch: one YAML per built-in data set in this package,
``_default.yaml`` for a registered data set without one, ``_own_images.yaml`` for a folder
or manifest of one's own images."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from hpsearch.studies.limits import SpecLoader
from hpsearch.studies.spec import OWN_IMAGES_SPEC, StudySpec, parse_spec, validate_spec

__all__ = ["builtin_spec_names", "builtin_spec_text", "load_builtin_spec", "own_images_spec"]


def builtin_spec_names() -> list[str]:
    """Names of the specs shipped in ``hpsearch/studies/`` (one per built-in data set)."""
    files = resources.files(__package__).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files
                  if f.name.endswith(".yaml") and not f.name.startswith("_"))


def builtin_spec_text(name: str) -> str:
    """The YAML text of the built-in spec of data set ``name``, comments included. A
    registered data set without a spec of its own gets ``_default.yaml`` for it;
    ``own_images`` is the study of a folder of one's own images (``dataset: PATH``).

    Raises:
        ValueError: ``name`` is neither a built-in spec nor a registered data set; the
            message lists the choices.
    """
    from hpsearch.data_utils import list_datasets

    if name in builtin_spec_names():
        return resources.files(__package__).joinpath(f"{name}.yaml").read_text()
    if name == OWN_IMAGES_SPEC.strip("_") and name not in list_datasets():
        return resources.files(__package__).joinpath(f"{OWN_IMAGES_SPEC}.yaml").read_text()
    if name in list_datasets():
        text = resources.files(__package__).joinpath("_default.yaml").read_text()
        return text.replace("dataset: DATASET", f"dataset: {name}")
    choices = ", ".join(sorted(set(builtin_spec_names()) | set(list_datasets())))
    raise ValueError(f"unknown dataset {name!r}; choose one of: {choices} (or own_images, "
                     "the study of a folder of your own images)")


def load_builtin_spec(name: str) -> StudySpec:
    """The built-in spec for data set ``name`` (see :func:`builtin_spec_text`).

    Raises:
        ValueError: no built-in spec or registered data set has that name; the message
            lists the choices.
    """
    source = name if name in builtin_spec_names() else "_default"
    return parse_spec(builtin_spec_text(name), f"built-in spec {source}.yaml")


def own_images_spec(path: str | Path) -> StudySpec:
    """The built-in study of a folder or manifest of one's own images
    (``_own_images.yaml``) on ``path``.

    Raises:
        SpecError: ``path`` is neither a registered data set nor an existing path (key
            ``dataset``; the message lists the registered names).
    """
    text = resources.files(__package__).joinpath(f"{OWN_IMAGES_SPEC}.yaml").read_text()
    raw = yaml.load(text, Loader=SpecLoader)
    raw["dataset"] = str(path)
    return validate_spec(raw, f"built-in spec {OWN_IMAGES_SPEC}.yaml")
