"""What a study searches on this data set and this machine: the pretrained weights it needs,
fetched once before its first trial, and the architectures and image sizes that fit.

Weights are fetched by the process that opens the study, before any trial and before
``--jobs`` workers start (:meth:`~hpsearch.search.runner.RunSession.open`): a trial only
reads them from torchvision's cache (``$TORCH_HOME/hub/checkpoints``). What happens when a
backbone's weights are neither cached nor downloadable is the spec's ``missing_weights``:

- ``stop`` (the default, a spec that asks for ``pretrained: true``): the run stops before
  training with one line naming each file and the folder to put it in (exit code 2);
- ``skip`` (the built-in own-images study): a new study leaves those backbones out, with one
  line saying which and where their files go, and searches what it can.

A study's definition must not change between two runs of the same command, or resuming it
would be refused: so the architectures a ``skip`` study searches are decided once, when it
is created, and recorded in its definition. A resumed study searches exactly those again: a
weights file that appeared since does not add its backbone (a line says so and suggests a
new ``--study-name``), and one that disappeared is fetched again, or stops the run as
``stop`` does (the study's trials need it).

The data decide the rest (:func:`fit_to_data`), the same way every time for the same data:
sizes of a searched ``image_size`` above the data set's are left out (a trial downsamples,
never enlarges), and the from-scratch families are left out where the images are larger
than the spec's ``scratch_max_image_size`` while a backbone is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpsearch import defaults
from hpsearch.models.weights import (
    WeightsUnavailable,
    ensure_weights,
    is_backbone,
    missing_weights,
    weights_of,
)
from hpsearch.search.progress import Reporter
from hpsearch.studies import SpecError, StudySpec

__all__ = ["fetch_weights", "fit_to_data", "recorded_architectures"]


def recorded_architectures(definition: Mapping[str, Any] | None) -> list[str] | None:
    """The architectures a study's recorded definition (``storage.study_definition``) can
    draw, or None without a definition."""
    if not definition:
        return None
    entry = definition.get("search_space", {}).get("arch")
    if isinstance(entry, dict):
        return list(entry)
    return list(entry) if isinstance(entry, list) else [entry]


def fetch_weights(spec: StudySpec, reporter: Reporter, *,
                  recorded: list[str] | None = None) -> StudySpec:
    """Fetch the weights of every backbone ``spec`` may start pretrained, once; returns
    the spec this study searches (``spec`` itself unless it skips backbones).

    Args:
        spec: the study spec.
        reporter: where the lines go (a download, left-out backbones).
        recorded: the architectures the study was created with (see
            :func:`recorded_architectures`), or None for a new study.

    Raises:
        WeightsUnavailable: weights that are neither cached nor downloadable, for a
            ``stop`` spec, for a resumed ``skip`` study that searches them, or for a
            ``skip`` spec with nothing else to search.
    """
    if spec.missing_weights != "skip":
        _ensure(spec.pretrained_archs(), reporter)
        return spec
    if recorded is not None:
        return _as_recorded(spec, recorded, reporter)
    unavailable: dict[str, Any] = {}
    for arch in spec.pretrained_archs():
        try:
            _ensure([arch], reporter)
        except WeightsUnavailable as exc:
            unavailable[arch] = exc.paths[arch]
    if not unavailable:
        return spec
    try:
        searched = spec.without_archs(unavailable)
    except SpecError:  # nothing left to search: say what is missing, as stop does
        raise WeightsUnavailable(unavailable, "not cached and not downloadable") from None
    folder = next(iter(unavailable.values())).parent
    reporter.say(f"left out {', '.join(unavailable)}: pretrained weights neither cached nor "
                 f"downloadable ({', '.join(p.name for p in unavailable.values())}); put the "
                 f"files in {folder} to search them in a new study; searching "
                 f"{', '.join(searched.architectures())}")
    return searched


def _as_recorded(spec: StudySpec, recorded: list[str], reporter: Reporter) -> StudySpec:
    """``spec`` searching the architectures a resumed study was created with."""
    absent = [arch for arch in spec.architectures() if arch not in recorded]
    try:
        searched = spec.without_archs(absent)
    except SpecError:  # the study was created by another spec: its check says how
        return spec
    now_available = [arch for arch in absent if is_backbone(arch)
                     and not missing_weights([arch])]
    if now_available:
        reporter.say(f"{', '.join(now_available)}: weights now in the cache, but this study "
                     f"was created without them and keeps its architectures; search them "
                     f"in a new study (--study-name)")
    _ensure(searched.pretrained_archs(), reporter)
    return searched


def _ensure(archs: list[str], reporter: Reporter) -> None:
    """:func:`ensure_weights` for ``archs``, with a line before each download (none where
    ``$HPSEARCH_DOWNLOAD_WEIGHTS`` turns downloads off)."""
    for arch, path in (missing_weights(archs) if defaults.download_weights() else {}).items():
        size = weights_of(arch).meta.get("_file_size")
        reporter.say(f"downloading the pretrained weights of {arch}"
                     f"{f' ({size:.0f} MB)' if size else ''} into {path.parent}")
    ensure_weights(archs)


def fit_to_data(spec: StudySpec, image_size: int, reporter: Reporter) -> StudySpec:
    """``spec`` as it searches a data set of ``image_size`` pixel images: searched image
    sizes above it left out, and the from-scratch families left out where the images are
    larger than ``spec.scratch_max_image_size`` and a backbone is left, each with a line.
    The same data give the same result every time."""
    spec, dropped = spec.image_sizes_up_to(image_size)
    if dropped:
        reporter.say(f"image_size {', '.join(dropped)} left out: the images are "
                     f"{image_size} px (a trial downsamples, never enlarges)")
    limit = spec.scratch_max_image_size
    scratch = [arch for arch in spec.architectures() if not is_backbone(arch)]
    if (limit is not None and image_size > limit and scratch
            and len(scratch) < len(spec.architectures())):
        spec = spec.without_archs(scratch)
        reporter.say(f"from-scratch families {', '.join(scratch)} left out: the images are "
                     f"{image_size} px, above the spec's scratch_max_image_size {limit}")
    return spec
