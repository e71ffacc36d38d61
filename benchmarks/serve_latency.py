"""Latency and throughput of a served hpsearch model, from a bounded load loop.

Start a server first (``hpsearch serve``), then for example::

    python benchmarks/serve_latency.py --url http://127.0.0.1:5001 --batch 1 --batch 256

For each batch size it sends real Fashion-MNIST test images (uint8 as JSON integers, one
request at a time, after a few warm-up requests) until ``--requests`` requests or
``--seconds`` seconds, whichever comes first, and prints one JSON line: latency p50 / p99
(ms, client side: serialisation, HTTP on loopback, parsing, inference) and images/s.
``--output full`` asks for the model's longest answer (class index, name and probabilities
per image) instead of its default, one class name per image.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request

import numpy as np

from hpsearch.data_utils import load_dataset


def measure(url: str, images: np.ndarray, *, requests: int, seconds: float,
            warmup: int = 5, output: str = "label") -> dict:
    body = json.dumps({"inputs": images.tolist(), "params": {"output": output}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})

    def once() -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        elapsed = time.perf_counter() - start
        assert len(payload["predictions"]) == len(images)
        return elapsed

    for _ in range(warmup):
        once()
    latencies = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < requests and time.perf_counter() < deadline:
        latencies.append(once())
    total = sum(latencies)
    return {
        "benchmark": "serve_latency",
        "batch": len(images),
        "output": output,
        "requests": len(latencies),
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2),
        "images_per_s": round(len(images) * len(latencies) / total, 1),
        "request_bytes": len(body),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5001")
    parser.add_argument("--batch", type=int, action="append",
                        help="batch size (repeatable; default 1 and 256)")
    parser.add_argument("--requests", type=int, default=300, help="most requests per batch size")
    parser.add_argument("--seconds", type=float, default=60.0, help="most seconds per batch size")
    parser.add_argument("--output", choices=["label", "class_index", "full"], default="label",
                        help="the model's answer (inference parameter output)")
    args = parser.parse_args()
    _, test = load_dataset("fashion_mnist")
    for batch in args.batch or [1, 256]:
        images = test.images[:batch, 0]  # uint8 (N, 28, 28)
        print(json.dumps(measure(args.url, images, requests=args.requests,
                                 seconds=args.seconds, output=args.output)), flush=True)


if __name__ == "__main__":
    main()
