"""Spend control's added latency: one connector, one unlimited client key and
one with a budget and rate limits, counted in moto's DynamoDB on this machine,
against the steady Azure stand-in (`latency serve`).

    .venv/bin/python tools/bench_spend.py [--count 300]

The two keys take turns request by request on kept-alive connections (the
latency client), so both see the same machine. Needs a release build; builds
what is missing (into CARGO_TARGET_DIR when set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import stack  # noqa: E402

AZURE_KEY = "bench-azure-key"
UNLIMITED_KEY = "bench-unlimited-key"
LIMITED_KEY = "bench-limited-key"
# Large enough that nothing is refused during the run: every request is reserved and settled.
KEYS = [
    UNLIMITED_KEY,
    {"key": LIMITED_KEY, "name": "bench", "budget": {"usd": 1_000_000, "period": "day"},
     "limits": {"requestsPerMinute": 1_000_000, "imagesPerMinute": 1_000_000}},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="requests per key")
    args = parser.parse_args()
    release = stack.target_dir() / "release"
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "azure-openai-image", "--example", "latency"], cwd=stack.ROOT, check=True)
    bench.LATENCY = release / "examples" / "latency"
    log_dir = Path(tempfile.mkdtemp(prefix="bench-spend-"))
    moto = stack.Moto(log_dir).start()
    azure_port = stack.free_port()
    azure = subprocess.Popen([str(bench.LATENCY), "serve", str(azure_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    connector = None
    try:
        azure_url = f"http://127.0.0.1:{azure_port}"
        stack.wait_for(f"{azure_url}/ready", 10)
        moto.put_secret("azure-key", AZURE_KEY)
        moto.put_secret("client-keys", json.dumps(KEYS))
        env = stack.connector_env(moto, stack.image_models(azure_url), "azure-key", CLIENT_API_KEYS_SECRET_ID="client-keys",
                                  USAGE_TABLE=moto.create_usage_table(), RUST_LOG="warn", RESPONSE_MODE="stream")
        port = stack.free_port()
        connector = subprocess.Popen([str(release / "azure-openai-image"), "--listen", f"127.0.0.1:{port}"], env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        stack.wait_for(f"{url}/health", 30)
        body = json.dumps({"model": "azure-image", "prompt": "a lighthouse", "n": 1, "size": "1024x1024"}).encode()
        targets = [(url, "/v1/images/generations", {"authorization": f"Bearer {key}", "content-type": "application/json"}, body)
                   for key in (UNLIMITED_KEY, LIMITED_KEY)]
        (unlimited, limited), _ = bench.timed_posts(targets, args.count, warmup=10)
        (item,) = moto.usage_items()
        print(f"{'key':<10} {'p50':>8} {'p90':>8} {'p99':>8}   (ms, {args.count} requests each, small answer)")
        for label, values in (("unlimited", unlimited), ("limited", limited)):
            print(f"{label:<10} {bench.pct(values, 50):>8.2f} {bench.pct(values, 90):>8.2f} {bench.pct(values, 99):>8.2f}")
        print(f"added by a limited key: {bench.pct(limited, 50) - bench.pct(unlimited, 50):.2f} ms p50, "
              f"{bench.pct(limited, 99) - bench.pct(unlimited, 99):.2f} ms p99 (one UpdateItem before the call; the settlement after the answer)")
        print(f"usage item after the run: {item['requests']} requests, spent ${item['spent'] / 1e6:.4f}, reserved {item['reserved']}")
    finally:
        if connector:
            connector.kill()
        azure.kill()
        moto.stop()


if __name__ == "__main__":
    main()
