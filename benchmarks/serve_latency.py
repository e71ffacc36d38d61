"""Latency of a served hpsearch champion: one image per request, as a base64-encoded image
file and as a JSON pixel array.

Start a server first (``hpsearch serve``), then for example::

    python benchmarks/serve_latency.py --url http://127.0.0.1:5001 --write-docs

It takes real Fashion-MNIST test images and sends one request of each form in turn (the
forms taking turns, so that a changing load on a shared machine weighs on each alike), one
request at a time after a few warm-up requests, until ``--requests`` requests per form or
``--seconds`` seconds, whichever comes first; one JSON line per form: latency p50 / p99
(ms, client side: HTTP on loopback, parsing, decoding, inference) and images/s. The forms:

- ``pixels``: the image as JSON integers, ``{"inputs": {"images": [image]}}``;
- ``png``: the same image as a base64 PNG file, ``{"dataframe_records": [{"image": ...}]}``
  (the model decodes it; same pixels, same answer);
- ``photo``: the image enlarged to 640 x 480 as a base64 JPEG (15 KB), as a phone
  photo would come: the model decodes it (at 1/8 scale: JPEG draft mode), turns it grey and
  resizes it to 28 px.

``--batch`` sends that many images per request instead (the first N test images).
``--output full`` asks for the model's longest answer (class index, name and probabilities
per image) instead of its default, one class name per image.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import time
import urllib.request

import numpy as np
from PIL import Image

from hpsearch.data_utils import load_dataset

FORMS = ("pixels", "png", "photo")


def request_body(images: np.ndarray, form: str, output: str) -> bytes:
    """The JSON body of one request of ``images`` (uint8 (N, 28, 28)) in ``form``."""
    params = {"params": {"output": output}}
    if form == "pixels":
        return json.dumps({"inputs": {"images": images.tolist()}} | params).encode()
    files = []
    for image in images:
        buffer = io.BytesIO()
        picture = Image.fromarray(image)
        if form == "photo":
            picture.convert("RGB").resize((640, 480), Image.Resampling.BILINEAR).save(
                buffer, "JPEG", quality=90)
        else:
            picture.save(buffer, "PNG")
        files.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return json.dumps({"dataframe_records": [{"image": f} for f in files]} | params).encode()


def measure(url: str, images: np.ndarray, forms: list[str], *, requests: int, seconds: float,
            warmup: int = 5, output: str = "label") -> list[dict]:
    """Latencies of requests of ``images`` in each of ``forms``, one request at a time, the
    forms taking turns (so a load that changes meanwhile, on a shared machine, weighs on each
    alike).

    Returns:
        Per form: form, batch, output, requests, p50_ms, p99_ms, images_per_s,
        request_bytes.
    """
    bodies = {form: request_body(images, form, output) for form in forms}

    def once(form: str) -> float:
        request = urllib.request.Request(f"{url}/invocations", data=bodies[form],
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        elapsed = time.perf_counter() - start
        assert len(payload["predictions"]) == len(images)
        return elapsed

    for _ in range(warmup):
        for form in forms:
            once(form)
    latencies: dict[str, list[float]] = {form: [] for form in forms}
    deadline = time.perf_counter() + seconds
    for turn in range(requests):
        if time.perf_counter() > deadline:
            break
        for form in forms[turn % len(forms):] + forms[:turn % len(forms)]:
            latencies[form].append(once(form))
    return [{
        "benchmark": "serve_latency",
        "form": form,
        "batch": len(images),
        "output": output,
        "requests": len(times),
        "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
        "p99_ms": round(1000 * float(np.percentile(times, 99)), 2),
        "images_per_s": round(len(images) * len(times) / sum(times), 1),
        "request_bytes": len(bodies[form]),
    } for form, times in latencies.items()]


def docs_body(rows: list[dict]) -> str:
    from _common import markdown_table

    return markdown_table(rows, {
        "form": "request", "batch": "images", "request_bytes": "bytes", "p50_ms": "p50 (ms)",
        "p99_ms": "p99 (ms)", "images_per_s": "images/s", "requests": "requests"})


def main() -> None:
    from _common import add_common_options, emit, machine_info, render_section, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5001")
    parser.add_argument("--form", choices=FORMS, action="append",
                        help=f"request form (repeatable; default all: {', '.join(FORMS)})")
    parser.add_argument("--batch", type=int, action="append",
                        help="images per request (repeatable; default 1)")
    parser.add_argument("--requests", type=int, default=300, help="most requests per form")
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="most seconds per batch size, all forms together")
    parser.add_argument("--output", choices=["label", "class_index", "full"], default="label",
                        help="the model's answer (inference parameter output)")
    parser.add_argument("--server-command", default="hpsearch serve",
                        help="how the server was started, for the docs section")
    add_common_options(parser)
    args = parser.parse_args()
    _, test = load_dataset("fashion_mnist")
    load_before = os.getloadavg()[0]
    rows = []
    for batch in args.batch or [1]:
        for row in measure(args.url, test.images[:batch, 0], args.form or list(FORMS),
                           requests=args.requests, seconds=args.seconds, output=args.output):
            emit(row)
            rows.append(row)
    load_after = os.getloadavg()[0]
    if args.write_docs:
        from _common import command_line, resolve_device

        section = render_section(
            "serve_latency", title="Serving latency: one image as a PNG file or a pixel array",
            machine=machine_info(resolve_device("cpu")), body=docs_body(rows),
            commands=[args.server_command, command_line()],
            notes="One request at a time on loopback after 5 warm-up requests, the three forms "
                  "taking turns; client-side "
                  "time from sending the (prepared) body to the parsed answer: HTTP, MLflow's "
                  "JSON parsing and schema check, the model's decoding and inference. "
                  "`pixels`: a 28 x 28 Fashion-MNIST test image as JSON integers; `png`: the "
                  "same image as a base64 PNG file (the same pixels reach the network); "
                  "`photo`: it enlarged to a 640 x 480 JPEG, decoded, turned grey and resized "
                  f"to 28 px by the model. Load average {load_before:.1f} at the start and "
                  f"{load_after:.1f} at the end (the machine was shared with other agents): "
                  "p99 is the load's more than the server's.")
        write_section(args.docs, "serve_latency", section)


if __name__ == "__main__":
    main()
