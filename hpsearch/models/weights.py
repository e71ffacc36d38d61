"""Pretrained weights of the torchvision backbones: where they are, fetching them, reading them.

The weights live where torchvision keeps them, ``$TORCH_HOME/hub/checkpoints/<file>``
(``torch.hub.get_dir()``; ``TORCH_HOME`` defaults to ``~/.cache/torch``), under the file name
of the weights' URL (``resnet18-f37072fd.pth``), so a file torchvision downloaded once is
used as is, and a file copied there by hand (a machine without internet) too. A missing file
is downloaded with a progress bar when the URL is reachable; its SHA-256 is checked against
the prefix in its name, as torchvision does. Nothing here downloads unless asked to:
:func:`ensure_weights` and :func:`load_pretrained_state_dict` do; everything else only looks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hpsearch import defaults
from hpsearch.errors import HpsearchError, error_line
from hpsearch.models.registry import list_models, model_hyperparameters

__all__ = ["WeightsUnavailable", "ensure_weights", "is_backbone", "list_backbones",
           "load_pretrained_state_dict", "missing_weights", "weights_available", "weights_file",
           "weights_of"]

DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt and per read, so no network fails fast


class WeightsUnavailable(HpsearchError):
    """Pretrained weights that are neither in torchvision's cache nor downloadable (or a
    cached file that cannot be read). The message is one line naming each file and the
    folder to put it in.

    Attributes:
        paths: ``{arch: where its file must be}`` for each architecture concerned.
    """

    def __init__(self, paths: dict[str, Path], reason: str) -> None:
        names = ", ".join(path.name for path in paths.values())
        folders = ", ".join(dict.fromkeys(str(path.parent) for path in paths.values()))
        urls = [weights_of(arch).url for arch in paths]
        bases = {url.rsplit("/", 1)[0] for url in urls}
        source = urls[0] if len(urls) == 1 else (
            f"them from {bases.pop()}/" if len(bases) == 1 else ", ".join(urls))
        super().__init__(
            f"pretrained weights of {', '.join(paths)} not available: {names} not in "
            f"{folders} ({reason}); download {source} on a machine with internet and put "
            f"{'it' if len(paths) == 1 else 'them'} in {folders} (that is "
            f"$TORCH_HOME/hub/checkpoints), or use pretrained: false")
        self.paths = dict(paths)


def is_backbone(arch: str) -> bool:
    """Whether architecture ``arch`` has pretrained weights (takes ``pretrained``)."""
    return "pretrained" in model_hyperparameters(arch)


def weights_of(arch: str) -> Any:
    """torchvision's default weights enum member of backbone ``arch``
    (``ResNet18_Weights.IMAGENET1K_V1``): ``url``, ``meta`` (``num_params``, ``_ops`` in
    GMACs at 224 px, ``min_size``), ``transforms()`` (mean, std).

    Raises:
        ValueError: ``arch`` is not a backbone.
    """
    import torchvision

    if not is_backbone(arch):
        raise ValueError(f"{arch!r} has no pretrained weights")
    return torchvision.models.get_model_weights(arch).DEFAULT


def weights_file(arch: str) -> Path:
    """Where the weights of backbone ``arch`` are (whether or not the file exists):
    ``torch.hub.get_dir()/checkpoints/<the URL's file name>``, torchvision's own place."""
    name = weights_of(arch).url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def missing_weights(archs: Iterable[str]) -> dict[str, Path]:
    """``{arch: where its file must be}`` for the backbones among ``archs`` whose weights
    are not in the cache; the from-scratch families need none. Never downloads."""
    return {arch: weights_file(arch) for arch in dict.fromkeys(archs)
            if is_backbone(arch) and not weights_file(arch).is_file()}


def weights_available(archs: Iterable[str]) -> list[str]:
    """The architectures of ``archs`` (in order, without repeats) that train without a
    network: the from-scratch families, and the backbones whose weights are cached. For a
    study that leaves out the backbones it cannot fetch. Never downloads."""
    return [arch for arch in dict.fromkeys(archs)
            if not is_backbone(arch) or weights_file(arch).is_file()]


def ensure_weights(archs: Iterable[str], *, progress: bool = True) -> dict[str, Path]:
    """Make sure the weights of every backbone among ``archs`` are in the cache, downloading
    each missing file once (with a progress bar on stderr when ``progress``). Call it once
    before a study's first trial, before ``--jobs`` workers start, so no trial downloads.

    Returns:
        ``{arch: weights file}`` for the backbones among ``archs``.

    Raises:
        WeightsUnavailable: files are missing and their download failed (no network, a
            refused connection, a file whose SHA-256 does not match its name) or is turned
            off (``$HPSEARCH_DOWNLOAD_WEIGHTS=0``); the message names every such file, after
            trying them all.
        HpsearchError: ``$HPSEARCH_DOWNLOAD_WEIGHTS`` is neither on nor off.
    """
    paths, failed, reasons = {}, {}, []
    for arch in dict.fromkeys(archs):
        if not is_backbone(arch):
            continue
        paths[arch] = weights_file(arch)
        if not paths[arch].is_file():
            reason = _download(arch, paths[arch], progress=progress)
            if reason is not None:
                failed[arch] = paths[arch]
                reasons.append(reason)
    if failed:
        raise WeightsUnavailable(failed, "could not be downloaded: " + "; ".join(
            dict.fromkeys(reasons)))
    return paths


def load_pretrained_state_dict(arch: str, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """The pretrained state dict of backbone ``arch`` (torchvision's keys, ImageNet's 1000
    classes and 3 input channels), on the CPU; the file is downloaded first if missing.

    Raises:
        WeightsUnavailable: the file is missing and cannot be downloaded, or cannot be read
            (a truncated copy, say: delete it to download it again).
    """
    path = ensure_weights([arch], progress=progress)[arch]
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and OS errors: the file is not a state dict
        raise WeightsUnavailable({arch: path}, f"{path.name} exists but cannot be read: "
                                 f"{error_line(exc, limit=200)}; delete it to download it "
                                 "again"
                                 ) from None


def _download(arch: str, path: Path, *, progress: bool) -> str | None:
    """Download the weights of ``arch`` to ``path``; None, or why it failed (downloads
    turned off by ``$HPSEARCH_DOWNLOAD_WEIGHTS=0`` among the reasons)."""
    if not defaults.download_weights():
        return f"${defaults.DOWNLOAD_WEIGHTS_ENV}=0: downloads are off"
    url = weights_of(arch).url
    # torchvision's names carry the first hex digits of the file's SHA-256 after the last
    # "-" (``resnet18-f37072fd.pth``): torch.hub checks the download against them.
    stem = path.name.split(".")[0]
    hash_prefix = stem.rsplit("-", 1)[-1] if "-" in stem else None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            # Writes a temporary file beside ``path`` and moves it there when complete.
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix,
                                           progress=progress)
    except Exception as exc:  # URLError, HTTPError, timeouts, a hash mismatch (RuntimeError)
        return error_line(exc, limit=200)
    return None


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub opens the URL without a timeout; a network that drops packets would hang
    the run before its first trial instead of failing with the folder to fill."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def list_backbones() -> list[str]:
    """The registered architectures that have pretrained weights, sorted."""
    return [arch for arch in list_models() if is_backbone(arch)]
