"""``hpsearch run --dataset PATH`` on own images that cannot be used at all: one line naming
the path and the reason, exit code 2, before any store is written. In this process
(click's CliRunner): each case fails while the data is checked, before training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from image_files import class_tree, image_bytes, noise, truncated

from hpsearch.cli import main

from observations import record

STORES = {"hpsearch.db", "mlflow.db", "mlruns", "hpsearch-checkpoints"}


def _one_class(root: Path) -> list[str]:
    class_tree(root / "photos", {"only": 3})
    return ["--dataset", "photos"]


def _no_images(root: Path) -> list[str]:
    (root / "photos" / "cats").mkdir(parents=True)
    (root / "photos" / "cats" / "notes.txt").write_text("x")
    return ["--dataset", "photos"]


def _manifest_without_labels(root: Path) -> list[str]:
    class_tree(root / "img", {"a": 2, "b": 2})
    (root / "m.csv").write_text("path,class\nimg/a/0.png,a\nimg/b/0.png,b\n")
    return ["--dataset", "m.csv"]


def _class_of_broken_files(root: Path) -> list[str]:
    class_tree(root / "photos", {"good": 6}, size=(16, 16))
    for i in range(3):
        truncated(root / "photos" / "broken" / f"{i}.png", image_bytes(noise("RGB", (40, 40))))
    return ["--dataset", "photos", "--image-size", "16"]


def _too_few_for_validation(root: Path) -> list[str]:
    class_tree(root / "photos", {"a": 2, "b": 2})
    return ["--dataset", "photos", "--image-size", "16"]


def _no_test_split(root: Path) -> list[str]:
    class_tree(root / "photos", {"a": 10, "b": 10})
    (root / "spec.yaml").write_text(
        "dataset: photos\nimage_size: 16\ntest_fraction: 0\nsearch_space:\n  lr: 0.01\n"
        "  batch_size: 8\n  depth: 1\n  dropout: 0.0\n  arch: mlp\n")
    return ["--spec", "spec.yaml"]


def _no_such_path(root: Path) -> list[str]:
    return ["--dataset", "./fotos"]


CASES: dict[str, tuple[Callable[[Path], list[str]], str, str]] = {
    "only one class": (_one_class, "photos", "only one class ('only')"),
    "a folder with no images": (_no_images, "photos", "no image files"),
    "a manifest without its label column": (_manifest_without_labels, "m.csv",
                                            "no 'label' column"),
    "a class whose every file is broken": (_class_of_broken_files, "photos",
                                           "no decodable training image for class 'broken'"),
    "too few files for a validation split": (_too_few_for_validation, "photos",
                                             "no validation image"),
    "no test split (test_fraction 0, no test/ folder)": (_no_test_split, "photos",
                                                         "no test image"),
    "a dataset that is neither registered nor a path": (_no_such_path, "'./fotos'",
                                                        "must exist"),
}


@pytest.mark.parametrize("case", CASES)
def test_own_images_that_cannot_be_used_stop_the_run_before_any_store_is_written(
        tmp_path, monkeypatch, case):
    make, names, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hpsearch.cli.run.handle_termination_signals", lambda: None)
    args = make(tmp_path)

    result = CliRunner().invoke(main, ["run", *args, "--trials", "1", "--device", "cpu",
                                       "--cache-dir", str(tmp_path / ".cache")])

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # progress lines of a decoding, then the error
    errors = [line for line in lines if line.startswith("hpsearch: error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.output, lines
    error = errors[0]
    assert message in error and names in error
    assert not STORES & {p.name for p in tmp_path.iterdir()}
    record(f"own images, hpsearch run: {case}",
           f"exit code 2, one line naming the path: {message!r}",
           "no store written (no hpsearch.db, mlflow.db, checkpoints)")
