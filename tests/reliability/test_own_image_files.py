"""Own images with the files users really have: each broken or unusual file is skipped with
its reason (the load goes on) or used as a viewer shows it; a path that cannot be used at all
is one clear error naming it. Every case writes its own small files with Pillow."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from image_files import bomb_png, exif_rotated_jpeg, image_bytes, noise, truncated, write
from PIL import Image

from hpsearch.cli import main
from hpsearch.data_utils.own_images import (
    ImageDataError,
    ImageOptions,
    class_key_parts,
    load_images,
)

from observations import record

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16


def build(tmp_path: Path, write_case: Callable[[Path], object], *, mode: str = "L"):
    """``p/ok`` with 3 good images and ``p/case`` with 2 good images plus the case's file(s);
    the data set loaded at 16 px with every file in train or val."""
    root = tmp_path / "p"
    for name, count in (("ok", 3), ("case", 2)):
        for i in range(count):
            write(root / name / f"good{i}.png", noise(mode, (SIZE, SIZE)))
    write_case(root / "case")
    return load_images(root, ImageOptions(image_size=SIZE, val_fraction=0.2, test_fraction=0.0),
                       cache_dir=tmp_path / "cache", progress=None)


def pixels_of(data, name: str) -> np.ndarray:
    for split in ("train", "val", "test"):
        if name in data.files[split]:
            return np.asarray(getattr(data, split).images[data.files[split].index(name)])
    raise AssertionError(f"{name} is not used; skipped: {data.skipped}")


def reasons(data) -> dict[str, str]:
    return {s.path: s.reason for s in data.skipped}


SKIPPED = {
    "truncated PNG": (lambda d: truncated(d / "t.png", image_bytes(noise("L", (64, 64)))),
                      "case/t.png", "truncated"),
    "truncated JPEG": (lambda d: truncated(d / "t.jpg", image_bytes(noise("L", (64, 64)),
                                                                     "JPEG")),
                       "case/t.jpg", "truncated"),
    "empty file": (lambda d: (d / "e.png").write_bytes(b""), "case/e.png", "empty file"),
    "text file named .jpg": (lambda d: (d / "notes.jpg").write_text("not a photo\n"),
                             "case/notes.jpg", "not an image"),
    "decompression bomb (30,000 x 30,000 declared)": (
        lambda d: bomb_png(d / "bomb.png"), "case/bomb.png",
        "decompression bomb: declares 30,000 x 30,000 pixels"),
    "symlink loop (file)": (lambda d: os.symlink("loop.png", d / "loop.png"), "case/loop.png",
                            "symlink loop"),
    "symlink loop (folder)": (lambda d: os.symlink("..", d / "up"), "case/up/",
                              "symlink loop: leads back to a folder above it"),
    # An iPhone's photos (ISO-BMFF 'ftyp heic' header): Pillow does not read them as
    # installed; skipped with the reason instead of ignored like a .txt.
    "HEIC photo (.HEIC)": (lambda d: (d / "IMG_0001.HEIC").write_bytes(
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)),
        "case/IMG_0001.HEIC", "HEIC image: a format hpsearch does not read"),
}


@pytest.mark.parametrize("case", SKIPPED)
def test_an_unusable_file_is_skipped_with_its_reason_and_the_rest_is_used(tmp_path, case):
    write_case, path, reason = SKIPPED[case]
    data = build(tmp_path, write_case)
    assert reason in reasons(data)[path]
    assert sum(len(f) for f in data.files.values()) == 5  # every good image, nothing else
    record(f"own images: {case}", f"skipped, listed as {path!r}: {reasons(data)[path]!r}",
           "the other 5 images loaded and cached")


def test_a_decompression_bomb_is_never_decoded(tmp_path):
    bomb_png(tmp_path / "p" / "a" / "bomb.png")
    for name in ("a", "b"):
        write(tmp_path / "p" / name / "good.png", noise("L", (SIZE, SIZE)))
    # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss over fork and exec.
    code = textwrap.dedent(f"""
        from hpsearch.data_utils.own_images import load_images
        data = load_images({str(tmp_path / 'p')!r}, cache_dir={str(tmp_path / 'c')!r})
        peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
        print(len(data.skipped), peak.split()[1])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    skipped, peak_kib = map(int, result.stdout.split())
    assert skipped == 1 and peak_kib < 300 * 1024  # decoding it would take 900 MB
    record("own images: decompression bomb, memory", f"skipped; the process peaked at "
           f"{peak_kib // 1024} MB (decoding would need 900 MB)", "the other images")


def test_files_that_are_not_images_are_ignored_silently(tmp_path):
    def extras(folder: Path) -> None:
        for name in ("notes.txt", ".DS_Store", "Thumbs.db"):
            (folder / name).write_bytes(b"\x00\x01 not an image")

    data = build(tmp_path, extras)
    assert data.skipped == () and sum(len(f) for f in data.files.values()) == 5
    record("own images: .txt, .DS_Store, Thumbs.db in a class folder", "ignored silently",
           "all 5 images")


USED = {
    "CMYK JPEG": (lambda d: write(d / "c.jpg", Image.new("CMYK", (SIZE, SIZE),
                                                          (0, 255, 255, 0)), "JPEG"),
                  "case/c.jpg", "RGB", lambda px: px[0].mean() > 200 and px[1].mean() < 60),
    "RGBA PNG": (lambda d: write(d / "a.png", Image.new("RGBA", (SIZE, SIZE), (0, 0, 255, 0))),
                 "case/a.png", "RGB", lambda px: (px == 255).all()),  # transparent: white
    "palette PNG": (lambda d: write(d / "p.png", Image.new("RGB", (SIZE, SIZE), (0, 200, 0))
                                    .convert("P")), "case/p.png", "RGB",
                    lambda px: px[1].mean() > 190 and px[0].max() < 10),
    "LA PNG": (lambda d: write(d / "la.png", Image.new("LA", (SIZE, SIZE), (0, 255))),
               "case/la.png", "L", lambda px: (px == 0).all()),
    "16-bit PNG": (lambda d: write(d / "16.png", Image.fromarray(
        np.full((SIZE, SIZE), 65535, dtype=np.uint16))), "case/16.png", "L",
        lambda px: (px == 255).all()),
    "animated GIF": (lambda d: Image.new("L", (SIZE, SIZE), 255).save(
        d / "anim.gif", save_all=True, append_images=[Image.new("L", (SIZE, SIZE), 0)]),
        "case/anim.gif", "L", lambda px: (px == 255).all()),  # the first frame
    "1x1 image": (lambda d: write(d / "dot.png", Image.new("L", (1, 1), 77)),
                  "case/dot.png", "L", lambda px: (px == 77).all()),
    "EXIF-rotated JPEG": (lambda d: exif_rotated_jpeg(d / "r.jpg", Image.fromarray(
        np.repeat(np.r_[np.full(SIZE, 255), np.zeros(SIZE)][None].astype(np.uint8), SIZE, 0))),
        "case/r.jpg", "L", lambda px: px[0, :4].mean() > 200 and px[0, -4:].mean() < 50),
}


@pytest.mark.parametrize("case", USED)
def test_an_unusual_image_is_used_as_a_viewer_shows_it(tmp_path, case):
    write_case, path, mode, looks_right = USED[case]
    data = build(tmp_path, write_case, mode=mode)
    assert data.skipped == ()
    assert data.channels == (1 if mode == "L" else 3)
    pixels = pixels_of(data, path)
    assert pixels.shape == (data.channels, SIZE, SIZE) and looks_right(pixels)
    record(f"own images: {case}", f"used ({data.channels} channel(s), {SIZE} px), pixels as a "
           "viewer shows them", "all 6 images")


def _drop_file_read_override() -> None:
    """In the child: give up root's power to read any file, so mode 000 means unreadable."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_unreadable_file_is_skipped(tmp_path):
    root = tmp_path / "p"
    for name in ("a", "b"):
        write(root / name / "good.png", noise("L", (SIZE, SIZE)))
    locked = write(root / "a" / "locked.png", noise("L", (SIZE, SIZE)))
    locked.chmod(0)
    code = textwrap.dedent(f"""
        import json
        from hpsearch.data_utils.own_images import load_images
        data = load_images({str(root)!r}, cache_dir={str(tmp_path / 'c')!r}, progress=None)
        print(json.dumps({{s.path: s.reason for s in data.skipped}}))
    """)
    preexec = _drop_file_read_override if os.geteuid() == 0 else None
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
                                preexec_fn=preexec)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here: {exc}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"a/locked.png": "cannot be read: permission denied"}
    record("own images: unreadable file (mode 000; as root: run without CAP_DAC_OVERRIDE)",
           "skipped: 'cannot be read: permission denied'", "the readable images")


def test_an_empty_class_folder_is_reported_and_is_no_class(tmp_path):
    data = build(tmp_path, lambda d: (d.parent / "empty").mkdir())
    assert data.class_names == ("case", "ok")
    assert reasons(data)["empty/"] == "class folder holds no image: not a class"
    record("own images: empty class folder", "listed as skipped, not a class",
           "the two other classes")


def _one_class(root: Path) -> None:
    write(root / "only" / "a.png", noise("L"))


def _no_images(root: Path) -> None:
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "readme.txt").write_text("x")


def _manifest(text: str, name: str = "m.csv") -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for label in ("a", "b"):
            for i in range(2):
                write(root / "img" / label / f"{i}.png", noise("L", (SIZE, SIZE)))
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return make


UNUSABLE = {
    "only one class": (_one_class, "", "only one class ('only'); a classifier needs at least "
                                       "two"),
    "a folder with no images": (_no_images, "", "no image files (looked for .apng, .bmp"),
    "a manifest without its label column": (
        _manifest("path,class\nimg/a/0.png,a\n"), "m.csv",
        "no 'label' column (columns found: class, path)"),
    "a path that does not exist": (lambda root: None, "nothing/here", "does not exist"),
    "a zip archive of the folder": (
        lambda root: (root / "photos.zip").write_bytes(b"PK\x05\x06" + bytes(18)),
        "photos.zip", "neither a folder of images nor a manifest (a .csv, .tsv or .jsonl file); "
                      "an archive: unpack it and give the folder"),
}


@pytest.mark.parametrize("case", UNUSABLE)
def test_a_path_that_cannot_be_used_at_all_is_one_line_and_exit_2(tmp_path, case):
    make, relative, message = UNUSABLE[case]
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    target = root / relative if relative else root
    with pytest.raises(ImageDataError) as raised:
        load_images(target, cache_dir=tmp_path / "cache", progress=None)
    assert message in str(raised.value) and str(target) in str(raised.value)
    result = CliRunner().invoke(main, ["data", "cache", str(target),
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"hpsearch: error: {raised.value}"]
    assert not (tmp_path / "cache").exists()
    record(f"own images: {case}", f"exit code 2, one line: {message!r}", "nothing written")


def test_manifest_rows_that_cannot_be_used_are_skipped_with_their_line(tmp_path):
    _manifest("""
        path,label
        img/a/0.png,a
        img/a/1.png,a
        img/b/0.png,b
        img/b/1.png,b
        img/a/0.png,a
        img/missing.png,b
        img/b/0.png,
        img/IMG_0001.HEIC,b
    """)(tmp_path)
    (tmp_path / "img" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    data = load_images(tmp_path / "m.csv", ImageOptions(test_fraction=0.0),
                       cache_dir=tmp_path / "cache", progress=None)
    assert reasons(data) == {"img/a/0.png": "line 6: listed again (first on line 2)",
                             "img/missing.png": "line 7: does not exist",
                             "img/b/0.png": "line 8: empty label",
                             "img/IMG_0001.HEIC": "line 9: HEIC image: a format hpsearch does "
                                                  "not read (convert it to JPEG or PNG)"}
    assert sum(len(f) for f in data.files.values()) == 4
    record("own images: manifest with a duplicated path, a missing file, an empty label, "
           "a HEIC photo",
           "each row skipped with its line number and reason", "the 4 good rows")


def test_labels_with_spaces_slashes_and_non_ascii_letters(tmp_path):
    labels = ["red fox", "cat/dog", "Äpfel", "猫", "cat dog"]
    lines = []
    for i, label in enumerate(labels):
        for j in range(2):
            write(tmp_path / "img" / f"{i}-{j}.png", noise("L", (SIZE, SIZE)))
            lines.append(json.dumps({"path": f"img/{i}-{j}.png", "label": label},
                                    ensure_ascii=False))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_images(tmp_path / "m.jsonl", ImageOptions(test_fraction=0.0),
                       cache_dir=tmp_path / "cache", progress=None)
    assert data.class_names == tuple(sorted(labels))
    parts = class_key_parts(data.class_names)
    assert len(set(parts)) == len(parts) and "cat_dog" in parts and "猫" in parts
    from mlflow.utils.validation import _validate_metric_name

    for part in parts:
        _validate_metric_name(f"val_f1/{part}")
    record("own images: labels with spaces, slashes and non-ASCII letters",
           f"classes kept as written; metric key parts {list(parts)}", "all images")
