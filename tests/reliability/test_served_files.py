"""Hostile image files sent to a served champion (`mlflow models serve`): a decompression
bomb, a file over the bytes per image, more files than a request may hold, a file that is
not an image. Each gets HTTP 400 naming the image and the limit or the reason, the server's
memory stays where it was, and it answers the next request."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from image_files import bomb_png
from PIL import Image

from hpsearch.serving.image_files import MAX_IMAGE_BYTES
from hpsearch.serving.images import MAX_BATCH

from conftest import needs_fashion_mnist, post_images
from observations import record

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def png(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def request(files: list[bytes]) -> str:
    return json.dumps({"dataframe_records": [{"image": base64.b64encode(f).decode()}
                                             for f in files]})


def server_peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of the uvicorn process below ``pid``, MiB."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"uvicorn" in cmdline and _is_below(int(entry.name), pid):
            return int(status.split("VmHWM:")[1].split()[0]) / 1024
    raise AssertionError(f"no uvicorn process below {pid}")


def _is_below(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


CASES = {
    "a PNG of a few hundred bytes declaring 30,000 x 30,000 pixels": (
        lambda tmp: [png(), bomb_png(tmp / "bomb.png").read_bytes()],
        "image 1: decompression bomb"),
    "a file of 32 MiB + 1 byte": (
        lambda tmp: [np.random.default_rng(1).bytes(MAX_IMAGE_BYTES + 1)],
        f"image 0: a file of {MAX_IMAGE_BYTES + 1:,} bytes, more than the limit of "
        f"{MAX_IMAGE_BYTES:,} bytes (32 MiB) per image file"),
    f"{MAX_BATCH + 1} files in one request": (
        lambda tmp: [png()] * (MAX_BATCH + 1),
        f"batch of {MAX_BATCH + 1} images exceeds the maximum of {MAX_BATCH} per request"),
    "a text file as the second image": (
        lambda tmp: [png(), b"just text"],
        "image 1: not an image (Pillow cannot identify the file)"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_image_file_gets_400_and_the_server_goes_on(served, case, tmp_path):
    files, message = CASES[case]
    body = request(files(tmp_path))
    assert post_images(served.url, raw=request([png(1)]))[0] == 200
    before = server_peak_rss_mb(served.pid)
    start = time.monotonic()
    status, answer = post_images(served.url, raw=body)
    seconds = time.monotonic() - start
    assert status == 400, answer[:2000]
    assert message in answer and len(answer) < 2000
    grown = server_peak_rss_mb(served.pid) - before
    # The request's own JSON is in memory a few times over (body, parsed strings, table).
    assert grown < 200 + 4 * len(body) / 2**20, grown
    status, good = post_images(served.url, raw=request([png(2)]))
    assert status == 200 and len(good["predictions"]) == 1
    record(f"a served champion sent {case}",
           f"HTTP 400 in {seconds:.2f} s: \"{message}\"; the server's peak memory grew "
           f"{max(grown, 0):.0f} MiB for a request of {len(body) / 2**20:.1f} MiB",
           "the server answers the next request")
