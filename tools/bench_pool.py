"""A burst of one-image requests against Azure's per-minute quota: a pool of
three deployments of 5 images a minute each, beside one such deployment,
through `cargo lambda watch` and the official `openai` SDK (no SDK retries).
Prints, per case, the successes, the client-visible 429s, and the time to
the last success; each case on fresh quotas and a fresh connector.

    .venv/bin/python tools/bench_pool.py [--requests 15]

With one deployment the connector waits out Azure's `Retry-After` (up to
MAX_RETRY_WAIT_SECONDS, 60 s by default), so that case takes minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai  # noqa: E402

import stack  # noqa: E402
from fake_azure import FakeAzure  # noqa: E402

KEY = "bench-client-key"
AZURE_KEY = "bench-azure-key"
VERSION = "2025-04-01-preview"


def burst(url: str, model: str, requests: int) -> tuple[int, int, float]:
    """Successes, 429s, and seconds from the start to the last success."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=900)
    started = time.monotonic()

    def one(i: int) -> tuple[bool, float]:
        try:
            client.images.generate(model=model, prompt=f"burst {i}", size="1024x1024", quality="low")
            return True, time.monotonic() - started
        except openai.RateLimitError:
            return False, 0.0

    with ThreadPoolExecutor(max_workers=requests) as pool:
        results = list(pool.map(one, range(requests)))
    ok = [at for good, at in results if good]
    return len(ok), requests - len(ok), max(ok, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=15)
    args = parser.parse_args()
    names = ["east", "west", "north", "single"]
    deployments = {n: {"model": "gpt-image-1", "api_version": VERSION, "images_per_minute": 5} for n in names}
    # (model, requests, label, settings): each case on fresh quotas and a fresh connector.
    cases = [
        ("pooled", args.requests, "3 (a pool)", {}),
        ("pooled", args.requests + 5, "3 (a pool)", {}),
        ("single", args.requests, "1", {}),
        ("single", args.requests, "1, `MAX_RETRIES=0`", {"MAX_RETRIES": "0"}),
    ]
    with tempfile.TemporaryDirectory(prefix="aoi-bench-pool-") as d:
        log_dir = Path(d)
        moto = stack.Moto(log_dir).start()
        azure = FakeAzure(deployments, [AZURE_KEY]).start()
        try:
            moto.put_secret("azure-key", AZURE_KEY)
            moto.put_secret("client-keys", f'["{KEY}"]')
            item = lambda n: {"baseURL": azure.base_url(n), "apiVersion": VERSION, "name": n}
            models = [
                {"name": "pooled", "model": "gpt-image-1", "deployments": [item(n) for n in names[:3]]},
                {"name": "single", "model": "gpt-image-1", "baseURL": azure.base_url("single"), "apiVersion": VERSION},
            ]
            print("one-image requests sent at once; quota 5 images/min per deployment")
            print("| deployments | requests | successes | client-visible 429s | Azure's 429s | time to the last success |")
            print("|---|---|---|---|---|---|")
            for model, requests, label, settings in cases:
                azure.reset_quotas()
                env = stack.connector_env(moto, models, "azure-key", CLIENT_API_KEYS_SECRET_ID="client-keys", **settings)
                connector = stack.Connector(env, log_dir).start()
                try:
                    ok, refused, last = burst(connector.url, model, requests)
                finally:
                    connector.stop()
                absorbed = sum(azure.throttled.values())
                print(f"| {label} | {requests} | {ok} | {refused} | {absorbed} | {last:.2f} s |", flush=True)
        finally:
            azure.stop()
            moto.stop()


if __name__ == "__main__":
    main()
