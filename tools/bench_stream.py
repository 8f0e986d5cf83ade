"""Time to first and last byte of small answers, streamed against buffered,
through `cargo lambda watch` (the Lambda Runtime API path).

A streamed answer leaves the function as several writes (prelude, its end,
the body); with Nagle's algorithm on the Runtime API connection the later
writes wait for the receiver's delayed ACK (~40 ms). This prints the figures
that show whether streaming costs anything.

    .venv/bin/python tools/bench_stream.py [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack  # noqa: E402
from fake_azure import FakeAzure  # noqa: E402

KEY = "bench-client-key"


def timings(port: int, method: str, path: str, body: bytes | None, count: int) -> tuple[list[float], list[float]]:
    """Milliseconds to the first byte of the body and to its end, per request, on one kept-alive connection."""
    first, last = [], []
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    for i in range(count + 5):
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(1)
        got_first = time.perf_counter()
        response.read()
        done = time.perf_counter()
        if response.status != 200:
            raise SystemExit(f"{path}: status {response.status}")
        if i >= 5:  # warm-up
            first.append((got_first - started) * 1000)
            last.append((done - started) * 1000)
    conn.close()
    return first, last


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    moto = stack.Moto(log_dir).start()
    azure = FakeAzure(stack.fake_deployments(), ["bench-azure-key"]).start()
    connectors = []
    try:
        moto.put_secret("azure-key", "bench-azure-key")
        moto.put_secret("client-keys", json.dumps([KEY]))
        rows = []
        for mode in ("buffered", "stream"):
            env = stack.connector_env(moto, stack.image_models(azure.url), "azure-key", CLIENT_API_KEYS_SECRET_ID="client-keys", RESPONSE_MODE=mode, RUST_LOG="warn")
            connector = stack.Connector(env, log_dir).start()
            connectors.append(connector)
            cases = {
                "GET /health (15 B)": ("GET", "/health", None),
                "POST generation (small JSON)": ("POST", "/v1/images/generations", b'{"model":"azure-image","prompt":"x","size":"1024x1024"}'),
            }
            for name, (method, path, body) in cases.items():
                first, last = timings(connector.port, method, path, body, args.requests)
                rows.append((mode, name, pct(first, 50), pct(first, 99), pct(last, 50), pct(last, 99), statistics.mean(last)))
        print(f"{'mode':<9} {'case':<30} {'first p50':>10} {'first p99':>10} {'last p50':>9} {'last p99':>9} {'last mean':>10}  (ms, {args.requests} requests)")
        for mode, name, f50, f99, l50, l99, mean in rows:
            print(f"{mode:<9} {name:<30} {f50:>10.2f} {f99:>10.2f} {l50:>9.2f} {l99:>9.2f} {mean:>10.2f}")
    finally:
        for connector in connectors:
            connector.stop()
        azure.stop()
        moto.stop()


if __name__ == "__main__":
    main()
