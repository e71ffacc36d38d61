"""Pretrained weights for tests, without the network: an empty torchvision cache in a
temporary TORCH_HOME, downloads that fail as they do offline (or that write created weights
and count themselves), and "pretrained" state dicts saved under torchvision's file names."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from hpsearch.defaults import DOWNLOAD_WEIGHTS_ENV
from hpsearch.models.weights import list_backbones, weights_file

OFFLINE = "[Errno -3] Temporary failure in name resolution"


def offline_cache(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """TORCH_HOME at ``home`` (empty), and every download failing as without internet
    (downloads on, against the suite's ``HPSEARCH_DOWNLOAD_WEIGHTS=0``, so that they are
    tried)."""
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv(DOWNLOAD_WEIGHTS_ENV, "1")

    def offline(url: str, dst: str, hash_prefix: str | None = None,
                progress: bool = True) -> None:
        raise urllib.error.URLError(OFFLINE)

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def counting_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Downloads that succeed, writing random weights of the right architecture where
    torchvision would; returns the list of file names downloaded, in order."""
    monkeypatch.setenv(DOWNLOAD_WEIGHTS_ENV, "1")
    downloaded: list[str] = []

    def download(url: str, dst: str, hash_prefix: str | None = None,
                 progress: bool = True) -> None:
        name = Path(dst).name
        arch = next(a for a in list_backbones() if weights_file(a).name == name)
        downloaded.append(name)
        torch.manual_seed(len(downloaded))
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return downloaded


def save_weights(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random "pretrained" weights of ``arch`` where torchvision keeps them; returns them."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    path = weights_file(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state
