"""Own images as a data set: preprocessing, header probe, folder and manifest forms, splits,
leakage, the cache (found, rebuilt, atomic, shared), ``hpsearch data inspect`` / ``cache``.
Tiny real files written by Pillow; every load runs in this process (no worker pool) except
where the pool itself is tested."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from image_files import class_tree, exif_rotated_jpeg, image_bytes, noise, write
from PIL import Image

from hpsearch.cli import main
from hpsearch.data_utils.own_images import (
    ImageDataError,
    ImageFileError,
    ImageOptions,
    class_key_parts,
    default_image_size,
    is_path_dataset,
    load_images,
    preprocess_image,
    resolve_dataset,
)
from hpsearch.data_utils.own_images import cache as cache_files
from hpsearch.data_utils.own_images.headers import HEAD_BYTES, read_file, read_header
from hpsearch.data_utils.own_images.preprocess import is_grey
from hpsearch.data_utils.own_images.splits import assign_splits, find_leakage
from hpsearch.data_utils.own_images.workers import Progress

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, tmp_path: Path, **options: object):
    return load_images(path, ImageOptions(**options), cache_dir=tmp_path / "cache",
                       progress=None)


# --- preprocessing ---------------------------------------------------------------------------

def test_preprocess_centre_crops_the_shorter_side_and_resizes() -> None:
    # 30 x 10: left third red, middle third green, right third blue; the centred 10 x 10
    # square is the green third (the filter blends in its neighbours at the two edges only,
    # as resizing the whole image and then cropping would).
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)
    pixels[:, :10, 0] = pixels[:, 10:20, 1] = pixels[:, 20:, 2] = 255
    out = preprocess_image(image_bytes(Image.fromarray(pixels)), image_size=8, channels=3)
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    inner = out[:, :, 1:-1]
    assert (inner[1] == 255).all() and inner[0].max() == 0 and inner[2].max() == 0
    assert out[0, :, 0].max() > 0 and out[2, :, -1].max() > 0


def test_preprocess_same_size_is_the_pixels_unchanged_and_bytes_equal_path(tmp_path) -> None:
    image = noise("L", (12, 12))
    path = write(tmp_path / "a.png", image)
    out = preprocess_image(path, image_size=12, channels=1)
    np.testing.assert_array_equal(out[0], np.asarray(image))
    np.testing.assert_array_equal(out, preprocess_image(path.read_bytes(), image_size=12,
                                                        channels=1))


def test_small_images_resized_together_get_each_ones_own_pixels() -> None:
    from hpsearch.data_utils.own_images.preprocess import resize_group, resize_square

    rng = np.random.default_rng(3)
    cases = [((28, 28), 24), ((20, 30), 16), ((30, 20), 16), ((24, 30), 24), ((30, 24), 24),
             ((24, 24), 32), ((17, 33), 9), ((24, 24), 24)]
    # both passes, one pass only, upscaled, odd, none (the pixels copied out together)
    for (width, height), size in cases:
        for channels in (1, 3):
            arrays = rng.integers(0, 256, (5, height, width, channels), dtype=np.uint8)
            images = [Image.fromarray(a[..., 0] if channels == 1 else a) for a in arrays]
            together = resize_group(images, size)
            assert together.shape == (5, size, size, channels)
            for image, row in zip(images, together):
                alone = np.asarray(resize_square(image, size)).reshape(size, size, channels)
                np.testing.assert_array_equal(row, alone, err_msg=f"{width}x{height}")


def test_a_png_or_jpeg_opened_directly_is_what_image_open_gives() -> None:
    from hpsearch.data_utils.own_images.preprocess import FORMATS, _open_directly

    picture = noise("RGB", (40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: its info must come through
    files = {"PNG": image_bytes(picture, "PNG"),
             "JPEG": image_bytes(picture, "JPEG", exif=exif.tobytes()),
             "PNG L": image_bytes(picture.convert("L"), "PNG")}
    for name, data in files.items():
        Image.open(io.BytesIO(data), formats=FORMATS)  # Pillow's plug-ins registered
        direct = _open_directly(data, io.BytesIO(data), 10**6)
        assert direct is not None, name
        usual = Image.open(io.BytesIO(data), formats=FORMATS)
        assert (type(direct), direct.format, direct.size, direct.mode, direct.info) == (
            type(usual), usual.format, usual.size, usual.mode, usual.info), name
        np.testing.assert_array_equal(np.asarray(direct), np.asarray(usual), err_msg=name)
    corrupt = bytearray(files["PNG"])
    corrupt[12:16] = b"XXXX"  # IHDR renamed: Pillow's PNG plug-in gives up, Image.open words it
    for data in (image_bytes(picture, "GIF"), image_bytes(picture, "BMP"), bytes(corrupt)):
        stream = io.BytesIO(data)
        assert _open_directly(data, stream, 10**6) is None and stream.tell() == 0
    too_many = 2 * Image.MAX_IMAGE_PIXELS + 1  # above Pillow's own refusal: Image.open's call
    assert _open_directly(files["PNG"], io.BytesIO(files["PNG"]), too_many) is None
    with pytest.raises(ImageFileError, match="not an image"):
        preprocess_image(bytes(corrupt), image_size=8, channels=3)
    cut = files["JPEG"][:200]  # inside its header: Pillow's plug-in raises an OSError
    with pytest.raises(ImageFileError, match=r"^truncated or corrupt header: "):
        preprocess_image(cut, image_size=8, channels=3)


def test_grey_in_a_colour_data_set_is_repeated_and_colour_in_grey_becomes_luma() -> None:
    grey = preprocess_image(image_bytes(Image.new("L", (4, 4), 77)), image_size=4, channels=3)
    assert (grey == 77).all() and grey.shape == (3, 4, 4)
    red = preprocess_image(image_bytes(Image.new("RGB", (4, 4), (255, 0, 0))), image_size=4,
                           channels=1)
    assert (red == 76).all()  # ITU-R 601: 0.299 * 255


def test_transparent_pixels_are_white_and_16_bit_is_scaled() -> None:
    rgba = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    rgba.putpixel((1, 1), (10, 20, 30, 255))
    out = preprocess_image(image_bytes(rgba), image_size=3, channels=3)
    assert out[:, 0, 0].tolist() == [255, 255, 255]  # fully transparent: white
    assert out[:, 1, 1].tolist() == [10, 20, 30]  # opaque: its colour
    la = preprocess_image(image_bytes(Image.new("LA", (2, 2), (0, 128))), image_size=2,
                          channels=1)
    assert (la == 127).all()  # half-transparent black over white
    sixteen = Image.fromarray(np.array([[0, 32768], [65535, 257]], dtype=np.uint16))
    out = preprocess_image(image_bytes(sixteen), image_size=2, channels=1)
    assert out[0].tolist() == [[0, 128], [255, 1]]


def test_exif_orientation_is_applied(tmp_path) -> None:
    wide = np.zeros((8, 16), dtype=np.uint8)
    wide[:, :8] = 255  # left half white
    path = exif_rotated_jpeg(tmp_path / "r.jpg", Image.fromarray(wide), orientation=6)
    image = Image.open(path)
    assert image.size == (16, 8)
    out = preprocess_image(path, image_size=8, channels=1)[0]
    # Rotated 90 degrees clockwise for display: the white left half is now the top half.
    assert out[:3].mean() > 200 and out[-3:].mean() < 50


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path) -> None:
    from image_files import bomb_png

    with pytest.raises(ImageFileError, match="decompression bomb"):
        preprocess_image(bomb_png(tmp_path / "bomb.png"), image_size=8, channels=1)
    with pytest.raises(ImageFileError, match="decompression bomb: declares 30,000 x 30,000"):
        read_header(str(tmp_path / "bomb.png"))
    small = bomb_png(tmp_path / "small-bomb.png", 5_000, 5_000)  # under Pillow's own limit
    with pytest.raises(ImageFileError, match="declares 5,000 x 5,000 pixels, more than the "
                                             "limit of 1,000,000"):
        preprocess_image(small, image_size=8, channels=1, max_pixels=1_000_000)


HEADER_CASES = {
    "L": Image.new("L", (9, 7)), "1": Image.new("1", (9, 7)),
    "RGB": Image.new("RGB", (9, 7), (200, 30, 10)),
    "I16": Image.fromarray(np.zeros((7, 9), dtype=np.uint16)),
    "RGBA": Image.new("RGBA", (9, 7)), "LA": Image.new("LA", (9, 7)),
    "CMYK": Image.new("CMYK", (9, 7)), "P-grey": None, "P-colour": None,
}
# WEBP has no grey mode: see the next test.
FORMATS_OF = {"L": "PNG JPEG GIF BMP TIFF PPM", "1": "PNG BMP GIF TIFF",
              "RGB": "PNG JPEG GIF BMP WEBP TIFF PPM", "I16": "PNG TIFF", "RGBA": "PNG WEBP TIFF",
              "LA": "PNG TIFF", "CMYK": "JPEG TIFF", "P-grey": "PNG GIF BMP TIFF",
              "P-colour": "PNG GIF BMP TIFF"}


@pytest.mark.parametrize("case, fmt", [(case, fmt) for case, formats in FORMATS_OF.items()
                                       for fmt in formats.split()])
def test_the_header_parser_agrees_with_pillow(tmp_path, case, fmt) -> None:
    image = HEADER_CASES[case] or _palette(grey=case == "P-grey")
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(image_bytes(image, fmt))
    header, _ = read_header(str(path))
    opened = Image.open(path)
    assert (header.width, header.height, header.mode) == (opened.width, opened.height,
                                                          opened.mode)
    assert header.grey == is_grey(opened) == (case in ("L", "1", "I16", "LA", "P-grey"))


def test_a_grey_webp_is_colour_because_webp_stores_rgb(tmp_path) -> None:
    path = write(tmp_path / "g.webp", Image.new("L", (9, 7)), "WEBP")
    header, _ = read_header(str(path))
    assert (header.mode, header.grey) == ("RGB", False)


def _palette(*, grey: bool) -> Image.Image:
    image = Image.new("P", (9, 7))
    image.putpalette([v for i in range(256) for v in ((i, i, i) if grey else (i, 0, 255 - i))])
    return image


def test_the_jpeg_parser_skips_a_large_exif_segment(tmp_path) -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # ImageDescription: a 30 kB APP1 before the frame header
    path = write(tmp_path / "big-exif.jpg", Image.new("RGB", (33, 21)), "JPEG",
                 exif=exif.tobytes())
    header, _ = read_header(str(path))
    assert (header.width, header.height, header.mode, header.grey) == (33, 21, "RGB", False)


# --- folders and manifests -------------------------------------------------------------------

def test_a_folder_per_class_is_split_seeded_and_stratified(tmp_path) -> None:
    root = class_tree(tmp_path / "photos", {"cats": 30, "dogs": 20, "owls": 10})
    data = load(root, tmp_path, seed=3)
    assert data.class_names == ("cats", "dogs", "owls")
    assert data.counts == {"train": (24, 16, 8), "val": (3, 2, 1), "test": (3, 2, 1)}
    assert data.split_origin == {"train": "all files", "val": "carved", "test": "carved"}
    assert data.train.images.shape == (48, 3, 16, 16)  # median shorter side 16
    assert isinstance(data.train.images, np.memmap) and data.train.labels.dtype == np.int64
    again = load(root, tmp_path / "other", seed=3)
    assert again.files == data.files
    assert load(root, tmp_path, seed=4).files["val"] != data.files["val"]
    every = [f for split in data.files.values() for f in split]
    assert len(every) == len(set(every)) == 60
    assert data.name == "photos" and data.imbalance_ratio == 3.0


def test_split_folders_give_the_splits_and_a_missing_one_is_carved(tmp_path) -> None:
    root = tmp_path / "set"
    class_tree(root, {"a": 10, "b": 10}, split="train")
    class_tree(root, {"a": 2, "b": 3}, split="validation")
    data = load(root, tmp_path)
    assert data.counts["val"] == (2, 3)
    assert data.counts["test"] == (1, 1) and data.counts["train"] == (9, 9)
    assert data.split_origin == {"train": "folders", "val": "folders", "test": "carved"}
    assert all(f.startswith("validation/") for f in data.files["val"])


def test_every_extension_pillow_gives_the_decoded_formats_is_an_image(tmp_path) -> None:
    root = tmp_path / "p"
    kinds = {".jfif": "JPEG", ".JPE": "JPEG", ".mpo": "JPEG", ".pbm": "PPM", ".pnm": "PPM",
             ".apng": "PNG", ".Tif": "TIFF", ".webp": "WEBP"}
    for i, (suffix, fmt) in enumerate(kinds.items()):
        for label in ("a", "b"):
            mode = "1" if suffix == ".pbm" else "RGB"
            write(root / label / f"{i}{suffix}", noise("RGB", (20, 16)).convert(mode), fmt)
    data = load(root, tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert data.skipped == () and sum(len(f) for f in data.files.values()) == 2 * len(kinds)


def test_hidden_files_and_folders_and_non_images_are_ignored(tmp_path) -> None:
    root = class_tree(tmp_path / "p", {"a": 3, "b": 3})
    (root / ".ipynb_checkpoints").mkdir()
    write(root / ".ipynb_checkpoints" / "x.png", noise())
    write(root / "a" / "._0.png", noise())
    (root / "a" / "notes.txt").write_text("x")
    (root / "README.md").write_text("x")
    data = load(root, tmp_path)
    assert data.class_names == ("a", "b") and data.skipped == ()
    assert sum(len(f) for f in data.files.values()) == 6


@pytest.mark.parametrize("layout, message", [
    ({"train/a": 2, "other/a": 2}, "holds split folders (train/ ...) and other folders"),
    ({"train/a": 2, "val/a": 1, "validation/a": 1}, "holds val/ and validation/, each a "
                                                     "validation split; keep one"),
    ({"train/a": 2, "valid/a": 1, "val/a": 1}, "holds val/ and valid/"),
])
def test_an_ambiguous_folder_layout_is_one_clear_error(tmp_path, layout, message) -> None:
    for folder, count in layout.items():
        class_tree(tmp_path / "p", {folder: count})
    with pytest.raises(ImageDataError, match=re.escape(message)):
        load(tmp_path / "p", tmp_path)


def test_a_csv_manifest_with_relative_paths_and_a_split_column(tmp_path) -> None:
    images = class_tree(tmp_path / "files", {"x": 6, "y": 6})
    rows = ["path,label,split"]
    for label in ("x", "y"):
        rows += [f"../files/{label}/{i}.png,{label},{'test' if i == 0 else ''}" for i in range(6)]
    manifest = tmp_path / "lists" / "labels.csv"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(rows) + "\n")
    data = load(manifest, tmp_path)
    assert data.kind == "manifest" and data.name == "labels"
    assert data.counts["test"] == (1, 1)  # given; val carved from the 10 others
    assert sum(data.counts["val"]) == 1 and sum(data.counts["train"]) == 9
    assert data.split_origin["test"] == "column" and data.split_origin["val"] == "carved"
    assert images.exists()


def test_roboflows_valid_folder_is_the_validation_split(tmp_path) -> None:
    root = tmp_path / "export"
    class_tree(root, {"a": 6, "b": 6}, split="train")
    class_tree(root, {"a": 2, "b": 1}, split="valid")
    class_tree(root, {"a": 1, "b": 2}, split="test")
    data = load(root, tmp_path)
    assert data.counts == {"train": (6, 6), "val": (2, 1), "test": (1, 2)}
    assert data.split_origin == {"train": "folders", "val": "folders", "test": "folders"}


@pytest.mark.parametrize("suffix, delimiter, bom", [
    (".csv", ";", False), (".csv", ";", True), (".csv", "\t", False), (".csv", "|", False),
    (".tsv", "\t", False), (".csv", ",", True)])
def test_a_manifests_delimiter_follows_its_header_row(tmp_path, suffix, delimiter, bom
                                                      ) -> None:
    class_tree(tmp_path / "files", {"x": 6, "y": 6})
    rows = [delimiter.join(("path", "label", "split"))]
    rows += [delimiter.join((f"files/{c}/{i}.png", c, ("Valid", "TEST", "train", "")[i % 4]))
             for c in ("x", "y") for i in range(6)]
    manifest = tmp_path / f"m{suffix}"
    manifest.write_text(("\ufeff" if bom else "") + "\n".join(rows) + "\n", encoding="utf-8")
    data = load(manifest, tmp_path)
    assert data.class_names == ("x", "y") and data.skipped == ()
    assert data.counts["val"] == (2, 2) and data.counts["test"] == (2, 2)
    assert data.counts["train"] == (2, 2) and data.split_origin["val"] == "column"


def test_a_split_cell_of_no_known_split_skips_its_row_naming_the_values(tmp_path) -> None:
    class_tree(tmp_path / "files", {"x": 6, "y": 6})
    rows = ["path,label,split"] + [f"files/{c}/{i}.png,{c},{'dev' if i == 5 else 'train'}"
                                   for c in ("x", "y") for i in range(6)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load(tmp_path / "m.csv", tmp_path)
    assert [(s.path, s.reason) for s in data.skipped] == [
        (f"files/{c}/5.png", f"line {line}: split 'dev' is not train, val (valid, validation) "
                             "or test") for c, line in (("x", 7), ("y", 13))]


def test_a_jsonl_manifest_with_its_own_column_names_and_numeric_labels(tmp_path) -> None:
    class_tree(tmp_path, {"img": 12})
    lines = [json.dumps({"image_url": f"img/{i}.png", "digit": i % 3 * 5}) for i in range(12)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    data = load(tmp_path / "m.jsonl", tmp_path, path_column="image_url", label_column="digit")
    assert data.class_names == ("0", "5", "10")  # by number, not "0", "10", "5"


# --- splits, leakage ----------------------------------------------------------------------

def test_carving_hits_the_fractions_and_keeps_a_training_image_per_class() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 2])
    splits = assign_splits(labels, np.full(82, -1), num_classes=3, val_fraction=0.1,
                           test_fraction=0.2, seed=0)
    assert (splits == 1).sum() == 8 and (splits == 2).sum() == 16
    assert all(((splits == 0) & (labels == c)).any() for c in range(3))
    again = assign_splits(labels, np.full(82, -1), num_classes=3, val_fraction=0.1,
                          test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(splits, again)


def test_leakage_groups_identical_files_and_pixels_across_splits() -> None:
    splits = np.array([0, 1, 2, 0, 0])
    names = ["a", "b", "c", "d", "e"]
    files = [b"1", b"1", b"2", b"3", b"3"]
    pixels = [b"p", b"p", b"q", b"q", b"r"]
    groups = find_leakage(splits, names, files, pixels)
    assert [(g.kind, g.files) for g in groups] == [
        ("identical files", (("train", "a"), ("val", "b"))),
        ("identical pixels", (("train", "d"), ("test", "c")))]


def test_dedupe_drops_leaked_copies_from_val_and_test_only(tmp_path) -> None:
    root = tmp_path / "p"
    class_tree(root, {"a": 4, "b": 4}, split="train")
    class_tree(root, {"a": 2, "b": 2}, split="val")
    (root / "val" / "a" / "0.png").write_bytes((root / "train" / "a" / "1.png").read_bytes())
    grey = noise("RGB", (20, 16), seed=9)
    write(root / "train" / "b" / "9.png", grey)
    write(root / "val" / "b" / "9.png", grey, compress_level=0)  # other bytes, same pixels
    plain = load(root, tmp_path, test_fraction=0.0)
    assert [g.kind for g in plain.leakage.groups] == ["identical files", "identical pixels"]
    assert len(plain.val) == 5 and plain.leakage.dropped == ()
    deduped = load(root, tmp_path, test_fraction=0.0, dedupe=True)
    assert len(deduped.val) == 3 and len(deduped.train) == len(plain.train) == 9
    assert set(deduped.leakage.dropped) == {("val", "val/a/0.png"), ("val", "val/b/9.png")}
    assert "val/a/0.png" not in deduped.files["val"]
    assert deduped.cache_dir == plain.cache_dir  # dedupe is applied on loading, not cached


def leaky_tree(root: Path) -> Path:
    """train/ and val/ of two classes; val/a/0.png is train/a/1.png's bytes, val/b/9.png
    train/b/9.png's pixels in other bytes."""
    class_tree(root, {"a": 4, "b": 4}, split="train")
    class_tree(root, {"a": 2, "b": 2}, split="val")
    (root / "val" / "a" / "0.png").write_bytes((root / "train" / "a" / "1.png").read_bytes())
    image = noise("RGB", (20, 16), seed=9)
    write(root / "train" / "b" / "9.png", image)
    write(root / "val" / "b" / "9.png", image, compress_level=0)
    return root


LEAKS = [("identical files", (("train", "train/a/1.png"), ("val", "val/a/0.png"))),
         ("identical pixels", (("train", "train/b/9.png"), ("val", "val/b/9.png")))]


def test_rows_sharing_a_fingerprint_are_compared_before_any_leakage_is_reported(
        tmp_path, monkeypatch) -> None:
    from hpsearch.data_utils.own_images import passes

    root = leaky_tree(tmp_path / "p")
    # Every row gets the same fingerprint: only the comparison of the rows themselves
    # (and of the files' bytes) can tell the two true leaks from the other 12 images.
    monkeypatch.setattr(passes, "pixel_fingerprints", lambda rows: np.zeros(len(rows),
                                                                            np.uint64))
    data = load(root, tmp_path, test_fraction=0.0)
    assert [(g.kind, g.files) for g in data.leakage.groups] == LEAKS


def test_a_first_builds_remembered_headers_still_show_byte_identical_leakage(tmp_path) -> None:
    from hpsearch.data_utils.own_images import inspect_images

    root = leaky_tree(tmp_path / "p")
    data = load(root, tmp_path, test_fraction=0.0)
    assert [(g.kind, g.files) for g in data.leakage.groups] == LEAKS
    # Another image size has no cache: inspect reads the headers (and file digests) the
    # build remembered, without reading the files' headers again.
    report = inspect_images(root, ImageOptions(image_size=8, test_fraction=0.0),
                            cache_dir=tmp_path / "cache")
    assert not report["cache"]["exists"]
    assert report["leakage"]["groups"] == [
        {"kind": "identical files", "files": [["train", "train/a/1.png"],
                                              ["val", "val/a/0.png"]]}]


def test_pixel_fingerprints_are_equal_exactly_for_equal_rows() -> None:
    from hpsearch.data_utils.own_images.rows import pixel_fingerprints

    rng = np.random.default_rng(0)
    for shape in ((6, 1, 5, 5), (6, 3, 8, 8)):  # 25 bytes (padded to whole words), 192
        rows = rng.integers(0, 256, shape, dtype=np.uint8)
        rows[3] = rows[1]
        rows[5] = rows[1]
        rows[5, 0, 4, 4] ^= 1  # one bit apart
        prints = pixel_fingerprints(rows)
        assert prints.dtype == np.uint64 and prints.shape == (6,)
        assert prints[1] == prints[3] and len(set(prints.tolist())) == 5


def test_channel_sums_are_exact() -> None:
    from hpsearch.data_utils.own_images.rows import channel_sums

    rng = np.random.default_rng(1)
    # 300 px: beyond 32-bit sums of squares; 600 rows of 1 x 28 x 28: several blocks
    for shape in ((7, 3, 9, 9), (2, 1, 300, 300), (600, 1, 28, 28), (100, 3, 100, 100)):
        rows = rng.integers(0, 256, shape, dtype=np.uint8)
        rows[0] = 255
        wide = rows.astype(np.int64)
        np.testing.assert_array_equal(channel_sums(rows), np.stack([
            wide.sum(axis=(0, 2, 3)), (wide**2).sum(axis=(0, 2, 3))]))
    assert channel_sums(np.zeros((0, 3, 4, 4), np.uint8)).tolist() == [[0, 0, 0]] * 2


# --- the cache ---------------------------------------------------------------------------------

def test_cached_pixels_are_the_preprocessing_of_the_file_bit_for_bit(tmp_path) -> None:
    root = tmp_path / "p"
    for i in range(4):
        write(root / "a" / f"{i}.jpg", noise("RGB", (70, 50)), "JPEG")
        write(root / "b" / f"{i}.png", noise("RGB", (50, 90)))
        write(root / "a" / f"small{i}.png", noise("RGB", (20, 30), seed=i))  # resized together
        write(root / "b" / f"small{i}.png", noise("L", (30, 28), seed=i))
    data = load(root, tmp_path, image_size=24, val_fraction=0.25, test_fraction=0.25)
    for split in ("train", "val", "test"):
        arrays = getattr(data, split)
        for row, name in enumerate(data.files[split]):
            served = preprocess_image((root / name).read_bytes(), image_size=24, channels=3)
            np.testing.assert_array_equal(arrays.images[row], served)


def test_mean_and_std_are_those_of_the_training_split(tmp_path) -> None:
    data = load(class_tree(tmp_path / "p", {"a": 10, "b": 10}), tmp_path)
    pixels = data.train.images.astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, pixels.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(data.std, pixels.std(axis=(0, 2, 3)), atol=1e-6)


def test_an_unchanged_folder_finds_its_cache_and_a_change_builds_a_new_one(tmp_path,
                                                                             monkeypatch) -> None:
    root = class_tree(tmp_path / "p", {"a": 5, "b": 5})
    first = load(root, tmp_path)
    from hpsearch.data_utils.own_images import passes

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(passes, "decode_chunk", no_decoding)
    monkeypatch.setattr(passes, "probe_chunk", no_decoding)
    monkeypatch.setattr(passes, "sample_headers", no_decoding)
    assert load(root, tmp_path).cache_dir == first.cache_dir
    monkeypatch.undo()
    os.utime(root / "a" / "0.png", ns=(1, 1))  # same bytes, other modification time
    touched = load(root, tmp_path)
    assert touched.cache_dir != first.cache_dir
    resized = load(root, tmp_path, image_size=8)
    assert resized.cache_dir != touched.cache_dir and resized.train.images.shape[-1] == 8


def test_a_new_folder_is_decoded_before_any_stat_and_keyed_as_stat_gives_it(
        tmp_path, monkeypatch) -> None:
    from hpsearch.data_utils.own_images import cache as cache_files
    from hpsearch.data_utils.own_images import plan as plans
    from hpsearch.data_utils.own_images import sources
    from hpsearch.data_utils.own_images.sources import scan_source

    root = class_tree(tmp_path / "p", {"a": 5, "b": 5})
    os.utime(root / "a" / "1.png", ns=(5, 123_456_789_012))  # a time of its own
    cache = tmp_path / "cache"
    taken: list[int] = []
    stat_of = sources.stat_of
    monkeypatch.setattr(sources, "stat_of", lambda f: taken.append(1) or stat_of(f))
    plan = plans.Plan.make(root, ImageOptions(), cache, None, None, defer_stats=True)
    assert plan.stats_deferred and not taken  # nothing known of this folder: no stat pass
    first = load(root, tmp_path)
    assert not taken  # the build took each file's size and time while reading it
    expected = scan_source(root)  # the stat pass
    assert json.loads((first.cache_dir / "meta.json").read_text())["manifest_digest"] == (
        expected.digest)
    again = plans.Plan.make(root, ImageOptions(), cache, None, None, defer_stats=True)
    assert not again.stats_deferred and again.source.digest == expected.digest
    assert again.probe is not None and again.final == first.cache_dir
    # Without the listing remembered, a cache named for the folder still means: stat first.
    for memo in (cache / "listings").iterdir():
        memo.unlink()
    assert cache_files.listing_known(cache, expected.listing, "p")
    assert not plans.Plan.make(root, ImageOptions(), cache, None, None,
                               defer_stats=True).stats_deferred


def test_a_file_removed_after_the_listing_is_skipped_as_removed_not_as_a_broken_link(
        tmp_path, monkeypatch) -> None:
    from hpsearch.data_utils.own_images import build

    root = class_tree(tmp_path / "p", {"a": 4, "b": 4})
    (root / "b" / "link.png").symlink_to(root / "b" / "0.png")
    decode_files = build.decode_files

    def removing(*args: object, **kwargs: object):
        (root / "a" / "1.png").unlink()  # after the listing, before the decoding
        (root / "b" / "0.png").unlink()  # the link's target too
        return decode_files(*args, **kwargs)

    monkeypatch.setattr(build, "decode_files", removing)
    data = load(root, tmp_path, test_fraction=0.0)
    assert {(s.path, s.reason) for s in data.skipped} == {
        ("a/1.png", "no longer exists (removed after it was listed)"),
        ("b/0.png", "no longer exists (removed after it was listed)"),
        ("b/link.png", "broken symlink (its target does not exist)")}


def test_a_builder_waiting_on_a_new_folder_finds_the_cache_another_built(tmp_path) -> None:
    from hpsearch.data_utils.own_images import plan as plans

    root = class_tree(tmp_path / "p", {"a": 4, "b": 4})
    cache = tmp_path / "cache"
    waiting = plans.Plan.make(root, ImageOptions(), cache, None, None, defer_stats=True)
    assert waiting.stats_deferred
    built = load(root, tmp_path)  # another process, meanwhile
    waiting.recheck()  # what load_images does once it holds the build lock
    assert not waiting.stats_deferred and waiting.final == built.cache_dir


def test_a_first_build_reads_each_file_once_and_records_the_headers_a_probe_reads(
        tmp_path, monkeypatch) -> None:
    from image_files import truncated

    from hpsearch.data_utils.own_images import passes
    from hpsearch.data_utils.own_images.sources import scan_source

    root = class_tree(tmp_path / "p", {"a": 4, "b": 4}, mode="L", size=(30, 20))
    write(root / "a" / "x.jpg", noise("L", (50, 40)), "JPEG")
    write(root / "b" / "y.gif", noise("L", (24, 24)).convert("P"), "GIF")
    truncated(root / "b" / "t.png", image_bytes(noise("L", (64, 64))))
    (root / "a" / "z.png").write_bytes(b"text")

    def no_header_pass(*args: object) -> None:
        raise AssertionError("a separate header pass")

    monkeypatch.setattr(passes, "probe_chunk", no_header_pass)
    built = load(root, tmp_path)
    monkeypatch.undo()
    source = scan_source(root)
    recorded = passes.load_probe(tmp_path / "cache", source, ImageOptions().max_pixels)
    (tmp_path / "cache" / "probes").rename(tmp_path / "recorded")
    with passes.WorkerPool(1) as pool:
        probed = passes.probe_source(source, root=tmp_path / "cache",
                                     max_pixels=ImageOptions().max_pixels, pool=pool, stream=None)
    for name in ("widths", "heights", "modes", "grey"):
        np.testing.assert_array_equal(getattr(recorded, name), getattr(probed, name))
    assert recorded.reasons == probed.reasons == {source.names.index("a/z.png"): (
        "not an image (Pillow cannot identify the file)")}
    assert dict((s.path, s.reason[:3]) for s in built.skipped) == {"a/z.png": "not",
                                                                   "b/t.png": "PNG"}


def test_a_wrong_guess_from_the_sample_is_decoded_again(tmp_path, monkeypatch) -> None:
    from hpsearch.data_utils.own_images import passes

    root = class_tree(tmp_path / "p", {"a": 3, "b": 3}, mode="L")
    colour = write(root / "a" / "1.png", Image.new("RGB", (20, 16), (200, 0, 0)))  # unsampled
    monkeypatch.setattr(passes, "SAMPLE", 2)  # the first and the last file
    log = io.StringIO()
    data = load_images(root, cache_dir=tmp_path / "cache", progress=log)
    assert "the sample suggested 16 px, 1 channel(s); all headers say 16 px, 3: decoding " \
           "again" in log.getvalue()
    assert data.channels == 3
    row = next((split, i) for split in data.files
               for i, name in enumerate(data.files[split]) if name == "a/1.png")
    np.testing.assert_array_equal(getattr(data, row[0]).images[row[1]],
                                  preprocess_image(colour, image_size=16, channels=3))


def test_an_inspected_folder_builds_without_guessing(tmp_path, monkeypatch) -> None:
    from hpsearch.data_utils.own_images import inspect_images, passes

    root = class_tree(tmp_path / "p", {"a": 3, "b": 3})
    report = inspect_images(root, cache_dir=tmp_path / "cache")

    def no_sampling(*args: object) -> None:
        raise AssertionError("guessed")

    monkeypatch.setattr(passes, "sample_headers", no_sampling)
    data = load(root, tmp_path)
    assert str(data.cache_dir) == report["cache"]["folder"]


def test_the_last_chunks_are_cut_finer_and_every_row_is_in_one_chunk() -> None:
    from hpsearch.data_utils.own_images.passes import _tapered
    from hpsearch.data_utils.own_images.workers import chunked

    chunks = chunked(range(10_000), 2, most=625)
    tapered = _tapered(chunks, 2)
    assert [r for c in tapered for r in c] == list(range(10_000))  # in order, each once
    assert [len(c) for c in tapered[-16:]] == [156, 156, 156, 157] * 4  # last 4 in quarters
    assert tapered[:-16] == chunks[:-4]
    assert _tapered(chunks[:3], 2) == chunks[:3]  # too few to cut


def test_a_background_flush_hands_its_error_to_the_waiting_build(tmp_path) -> None:
    (tmp_path / "written").write_bytes(b"rows")
    cache_files.Writeback(tmp_path / "written").final()()  # flushed, no error
    with pytest.raises(FileNotFoundError):
        cache_files.Writeback(tmp_path / "missing").final()()


def test_a_flush_during_decoding_hands_its_error_to_the_last_one(tmp_path) -> None:
    written = cache_files.Writeback(tmp_path / "written")
    (tmp_path / "written").write_bytes(b"rows")
    written.kick()
    written.kick()  # while one runs: nothing more
    written.final()()
    missing = cache_files.Writeback(tmp_path / "missing")
    missing.kick()  # fails in its thread; the error waits for the last flush's wait
    deadline = time.monotonic() + 30
    while not missing._errors and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "missing").write_bytes(b"rows")  # the last flush itself succeeds
    with pytest.raises(FileNotFoundError):
        missing.final()()


def test_chunk_rows_hold_each_image_whether_pasted_or_copied() -> None:
    from hpsearch.data_utils.own_images.rows import ChunkRows

    rng = np.random.default_rng(5)
    for channels, mode in ((1, "L"), (3, "RGB")):
        arrays = rng.integers(0, 256, (4, 6, 6, channels), dtype=np.uint8)
        images = [Image.fromarray(a[..., 0] if channels == 1 else a, mode) for a in arrays]
        expected = arrays.transpose(0, 3, 1, 2).copy()
        expected[2] = 0  # a failed file: zeros
        for pasted in (True, False):
            chunk = ChunkRows(4, 6, channels)
            assert (chunk._paste is not None) is True  # Pillow shares the memory here
            if not pasted:
                chunk._paste = None  # as where Pillow's image would not share it
            chunk.put(0, images[0])
            chunk.put(3, images[3])
            chunk.put_many([1], arrays[1:2])
            rows = chunk.rows()
            assert rows.shape == (4, channels, 6, 6) and rows.flags.c_contiguous
            np.testing.assert_array_equal(rows, expected, err_msg=f"{mode} pasted={pasted}")


def test_a_failed_build_leaves_no_cache_and_the_next_one_succeeds(tmp_path,
                                                                   monkeypatch) -> None:
    root = class_tree(tmp_path / "p", {"a": 3, "b": 3})
    from hpsearch.data_utils.own_images import passes

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(passes, "decode_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        load(root, tmp_path)
    monkeypatch.undo()
    cache = tmp_path / "cache"
    assert not [p for p in cache.iterdir() if p.name.startswith(("p-", ".tmp-"))]
    assert len(load(root, tmp_path).train) == 4


def test_a_killed_builds_temp_folder_is_removed_and_a_broken_cache_rebuilt(tmp_path) -> None:
    root = class_tree(tmp_path / "p", {"a": 3, "b": 3})
    data = load(root, tmp_path)
    cache = tmp_path / "cache"
    dead = cache / ".tmp-0123456789abcdef-deadbeef"
    dead.mkdir()
    (dead / "owner").write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 7}))
    (data.cache_dir / "images.npy").write_bytes(b"\x93NUMPY broken")
    again = load(root, tmp_path)
    assert again.cache_dir == data.cache_dir and len(again.train) == 4
    assert not dead.exists()
    assert [p for p in cache.iterdir() if p.name.startswith(".corrupt-")]


def test_the_first_rename_wins_when_two_builders_finish(tmp_path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    (final / "meta.json").write_text("{}")
    temp = tmp_path / ".tmp-x"
    temp.mkdir()
    for name in ("images.npy", "labels.npy"):
        (temp / name).write_bytes(b"x")
    assert cache_files.finish(temp, final, {"mine": True}) == final
    assert not temp.exists() and (final / "meta.json").read_text() == "{}"


def test_concurrent_builders_make_one_cache(tmp_path) -> None:
    root = class_tree(tmp_path / "p", {"a": 40, "b": 40})
    code = textwrap.dedent(f"""
        from hpsearch.data_utils.own_images import load_images
        from hpsearch.data_utils.own_images import workers
        workers.INLINE_BELOW = 10**9
        data = load_images({str(root)!r}, cache_dir={str(tmp_path / 'cache')!r})
        print(data.cache_dir, len(data.train))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({out for out, _ in outs}) == 1
    assert sum(err.count("decoding images") for _, err in outs) == 1, outs


def test_the_worker_pool_gives_the_same_cache_as_this_process(tmp_path, monkeypatch) -> None:
    from hpsearch.data_utils.own_images import workers

    root = class_tree(tmp_path / "p", {"a": 12, "b": 12})
    inline = load(root, tmp_path / "one")
    monkeypatch.setattr(workers, "INLINE_BELOW", 0)
    pooled = load_images(root, cache_dir=tmp_path / "two", workers=2, progress=None)
    np.testing.assert_array_equal(np.asarray(inline.train.images),
                                  np.asarray(pooled.train.images))
    assert inline.files == pooled.files and inline.mean == pooled.mean


def test_progress_writes_lines_in_a_log_and_a_bar_on_a_terminal() -> None:
    log = io.StringIO()
    progress = Progress("decoding images", 10, log, every_s=0.0)
    progress.advance(4)
    progress.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("decoding images: 4/10 (40%)")
    assert lines[-1].startswith("decoding images: 4 in ")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    Progress("x", 4, terminal).advance(2)
    bar = Progress("x", 4, terminal)
    bar.last -= 1
    bar.advance(2)
    assert "\r\033[K[############............] x: 2/4" in terminal.getvalue()


# --- names, sizes, the command line --------------------------------------------------------

def test_class_key_parts_are_valid_distinct_mlflow_key_parts() -> None:
    from mlflow.utils.validation import _validate_metric_name

    names = ["T-shirt/top", "Ankle boot", "a b", "a/b", "A B", "Äpfel", "猫", "..", "'q\"",
             "x.y", ""]
    parts = class_key_parts(names)
    assert parts[:2] == ("t-shirt_top", "ankle_boot")
    assert parts[5:7] == ("äpfel", "猫")
    assert len(set(parts)) == len(names)
    for part in parts:
        _validate_metric_name(f"val_f1/{part}")


def test_default_image_size_is_the_clipped_median_rounded_down_to_8() -> None:
    assert default_image_size(np.array([28, 28, 28])) == 24
    assert default_image_size(np.array([5, 6])) == 16
    assert default_image_size(np.array([3000, 4000])) == 224
    assert default_image_size(np.array([100, 60, 70])) == 64


def test_a_path_is_a_data_set_and_an_unknown_name_lists_the_registered_ones(tmp_path) -> None:
    assert is_path_dataset(tmp_path) and not is_path_dataset("mnist")
    assert resolve_dataset("mnist") == "mnist" and resolve_dataset(tmp_path) == tmp_path
    with pytest.raises(ValueError, match=r"not a registered data set \(one of cifar10, "
                                         r"fashion_mnist, mnist\).*must exist"):
        resolve_dataset("my_photos")


def test_inspect_reports_without_decoding_and_cache_builds_ahead(tmp_path) -> None:
    root = class_tree(tmp_path / "p", {"a": 8, "b": 2}, size=(40, 30))
    write(root / "b" / "extra.png", Image.open(root / "a" / "0.png"))  # same pixels as a/0
    runner = CliRunner()
    args = ["--cache-dir", str(tmp_path / "cache"), "--val-fraction", "0.2", "--seed", "1"]
    result = runner.invoke(main, ["data", "inspect", str(root), *args, "--format", "json",
                                  "--device-memory", "0.000001"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(c["name"], c["train"] + c["val"] + c["test"]) for c in report["classes"]] == [
        ("a", 8), ("b", 3)]
    assert report["image_size"] == 24 and report["channels"] == 3
    assert report["originals"]["modes"] == {"RGB": 11}
    assert report["cache"] == {"folder": report["cache"]["folder"], "exists": False,
                               "bytes": 11 * 3 * 24 * 24 + 11 * 8}
    assert report["device"]["fits"] is False and report["decode_checked"] is False
    built = runner.invoke(main, ["data", "cache", str(root), *args])
    assert built.exit_code == 0, built.output
    assert f"cache: {report['cache']['folder']}" in built.stdout
    text = runner.invoke(main, ["data", "inspect", str(root), *args])
    assert text.exit_code == 0 and "(built)" in text.stdout
    assert "imbalance: 3 (largest / smallest training class)" in text.stdout
    assert "identical files: val:b/extra.png, test:a/0.png" in text.stdout


def test_inspect_keeps_a_class_named_with_a_newline_on_one_line(tmp_path) -> None:
    root = class_tree(tmp_path / "p", {'we"ird\nname': 3, "café": 3})
    text = CliRunner().invoke(main, ["data", "inspect", str(root),
                                     "--cache-dir", str(tmp_path / "cache")])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.endswith("metric key"))
    assert lines[header + 3].startswith("imbalance:")  # two classes, one line each
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == [
        "café", 'we"ird\\nname']  # the newline written as an escape; letters as they are


@pytest.mark.parametrize("args, message", [
    (["--val-fraction", "0.6", "--test-fraction", "0.5"],
     "--val-fraction + --test-fraction must be below 1"),
    (["--image-size", "4"], "Invalid value for '--image-size'"),
])
def test_bad_data_options_are_one_line_and_exit_2(tmp_path, args, message) -> None:
    result = CliRunner().invoke(main, ["data", "inspect", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


def test_data_inspect_imports_no_torch(tmp_path) -> None:
    root = class_tree(tmp_path / "p", {"a": 2, "b": 2})
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from hpsearch.cli import main
        result = CliRunner().invoke(main, ["data", "inspect", {str(root)!r},
                                           "--cache-dir", {str(tmp_path / 'c')!r}])
        assert result.exit_code == 0, result.output
        assert "torch" not in sys.modules and "mlflow" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("size", [0, 300, HEAD_BYTES - 1, HEAD_BYTES, HEAD_BYTES + 1,
                                  (5 << 20) + 7])
def test_read_file_reads_every_byte_or_the_first_limit(tmp_path, size) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    assert read_file(str(path)) == data
    assert read_file(str(path), HEAD_BYTES) == data[:HEAD_BYTES]
    assert read_file(str(path), 10) == data[:10]
    with pytest.raises(FileNotFoundError):
        read_file(str(tmp_path / "missing.png"))


def test_a_probe_that_cannot_be_remembered_is_read_again_next_time(tmp_path) -> None:
    """The remembered header probe is a memo: a cache folder that cannot hold it (here a
    regular file where its folder should be) costs a second header pass, not the command."""
    from hpsearch.data_utils.own_images import passes
    from hpsearch.data_utils.own_images.sources import scan_source

    source = scan_source(class_tree(tmp_path / "p", {"a": 2, "b": 2}))
    (tmp_path / "blocked").write_text("a file, not a folder")
    max_pixels = ImageOptions().max_pixels
    with passes.WorkerPool(1) as pool:
        probe = passes.probe_source(source, root=tmp_path / "blocked", max_pixels=max_pixels,
                                    pool=pool, stream=None)
    assert probe.widths.tolist() == [20] * 4
    assert passes.load_probe(tmp_path / "blocked", source, max_pixels) is None
    passes.save_probe(tmp_path / "cache", source, max_pixels, probe)
    assert passes.load_probe(tmp_path / "cache", source, max_pixels) is not None
    assert [p.name for p in (tmp_path / "cache" / "probes").iterdir()] == [
        passes.probe_path(tmp_path / "cache", source, max_pixels).name]  # no temp file left
