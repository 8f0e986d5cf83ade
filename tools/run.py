"""The run command (scripts/run): the connector on this machine, ready for curl.

With no settings it starts everything it needs on 127.0.0.1: moto server as
Secrets Manager (seeded with a key), the Azure stand-in (real, decodable PNGs)
and the connector under `cargo lambda watch`.

Callers present the client key sk-local-dev (LOCAL_CLIENT_KEY overrides it),
kept in the local Secrets Manager's client keys secret; AUTH_MODE=none turns
the check off. That key has a small budget ($0.40 a day: ten dall-e-3
images) and 5 requests a minute, counted in moto's DynamoDB (USAGE_TABLE), so
a refusal is a few curls away.

Real Azure instead: set IMAGE_MODELS (see the README) and either
  AZURE_OPENAI_API_KEY   the key, seeded into the local Secrets Manager, or
  AZURE_API_KEY_SECRET_ID  a secret in your real AWS account (with AWS credentials in the
                         environment; then also CLIENT_API_KEYS_SECRET_ID, or AUTH_MODE=none).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack  # noqa: E402
from fake_azure import FakeAzure  # noqa: E402

LOCAL_SECRET = "azure-openai-image/azure-key"
LOCAL_CLIENT_KEYS = "azure-openai-image/client-keys"
STAND_IN_KEY = "local-azure-key"
# The key local callers present; in the local Secrets Manager's client keys secret.
LOCAL_CLIENT_KEY = os.environ.get("LOCAL_CLIENT_KEY", "sk-local-dev")
# The local key's spend limits (README, Budgets and rate limits).
LOCAL_BUDGET = {"usd": 0.4, "period": "day"}
LOCAL_LIMITS = {"requestsPerMinute": 5}


def main() -> int:
    parser = argparse.ArgumentParser(description="Run azure-openai-image locally.", epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9000")), help="where the connector listens (default 9000)")
    parser.add_argument("--local-server", action="store_true", help="serve on the plain local listener instead of under cargo lambda watch")
    parser.add_argument("--keep-logs", action="store_true", help="keep the log folder when the run ends (a failed start always keeps it)")
    args = parser.parse_args()

    # A plain `kill` (or a closed terminal) cleans up as Ctrl-C does. SIGINT
    # too, explicitly: started in the background by a script, Python would
    # inherit it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)

    # Before anything starts: a taken port is said at once, with its holder.
    try:
        stack.check_port_free(args.port)
    except stack.PortInUse as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    log_dir = Path(tempfile.mkdtemp(prefix="azure-openai-image-"))
    print(f"Logs: {log_dir}", flush=True)
    stoppers = []
    failed = up = False
    try:
        real_models = os.environ.get("IMAGE_MODELS")
        moto = None
        if real_models and not os.environ.get("AZURE_OPENAI_API_KEY"):
            if not os.environ.get("AZURE_API_KEY_SECRET_ID"):
                print("IMAGE_MODELS is set: also set AZURE_OPENAI_API_KEY, or AZURE_API_KEY_SECRET_ID with AWS credentials.", file=sys.stderr)
                return 2
            env = {}
            print("Using real Azure and real AWS Secrets Manager.")
        else:
            moto = stack.Moto(log_dir)
            stoppers.append(moto.stop)
            moto.start()
            if real_models:
                moto.put_secret(LOCAL_SECRET, os.environ["AZURE_OPENAI_API_KEY"])
                models = real_models
                print("Using real Azure; the key is in the local Secrets Manager.")
            else:
                # In-process: its start cannot fail half-way (and its stop needs it started).
                azure = FakeAzure(stack.fake_deployments(), [STAND_IN_KEY]).start()
                stoppers.append(azure.stop)
                moto.put_secret(LOCAL_SECRET, '{"apiKey": "%s"}' % STAND_IN_KEY)
                models = json.dumps(stack.image_models(azure.url))
                print(f"Azure stand-in on {azure.url}; Secrets Manager (moto) on {moto.url}.")
            env = stack.connector_env(moto, [], LOCAL_SECRET)
            env["IMAGE_MODELS"] = models
            # Spend control: the usage table in moto, and a small budget on the local key
            # (about ten dall-e-3 images a day, two requests a minute), so a refusal is easy to see.
            env["USAGE_TABLE"] = moto.create_usage_table()
            if os.environ.get("AUTH_MODE") != "none":
                local_key = {"key": LOCAL_CLIENT_KEY, "name": "local", "budget": LOCAL_BUDGET, "limits": LOCAL_LIMITS}
                moto.put_secret(LOCAL_CLIENT_KEYS, json.dumps([local_key]))
                env["CLIENT_API_KEYS_SECRET_ID"] = LOCAL_CLIENT_KEYS

        # cargo lambda watch streams like a Function URL with RESPONSE_STREAM.
        env["RESPONSE_MODE"] = os.environ.get("RESPONSE_MODE", "stream")
        mode = "local" if args.local_server else "lambda"
        connector = stack.Connector(env, log_dir, mode=mode, port=args.port)
        stoppers.append(connector.stop)
        front = "the local listener" if mode == "local" else "cargo lambda watch"
        print(f"Building the function (a fresh clone takes a few minutes), then starting it under {front}...", flush=True)
        started = time.monotonic()
        connector.start()
        up = True
        base = connector.url
        key = LOCAL_CLIENT_KEY if env.get("CLIENT_API_KEYS_SECRET_ID") else "<your client key>"
        print(
            f"""
azure-openai-image is up on {base} after {time.monotonic() - started:.0f}s  (function log: {connector.process.log})

  curl -s {base}/v1/images/generations -H 'Content-Type: application/json' \\
       -H 'Authorization: Bearer {key}' \\
       -d '{{"model": "azure-image", "prompt": "A cute cat", "n": 1, "size": "1024x1024"}}'

  curl -s '{base}/openai/deployments/dall-e-3/images/generations?api-version=2024-10-21' \\
       -H 'Content-Type: application/json' -H 'api-key: {key}' \\
       -d '{{"prompt": "A cute cat", "response_format": "b64_json"}}'

  OpenAI(base_url="{base}/v1", api_key="{key}")
  AzureOpenAI(azure_endpoint="{base}", api_key="{key}", api_version="2024-10-21")

Ctrl-C stops everything.""",
            flush=True,
        )
        while connector.process and connector.process.popen.poll() is None:
            time.sleep(0.5)
        failed = True
        print(f"the connector exited:\n{stack.relevant_tail(connector.process.log if connector.process else None)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if up else 130
    except (stack.PortInUse, stack.BuildFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - any failed start: say why, after stopping everything
        failed = True
        print(f"error: the start failed: {e}", file=sys.stderr)
        return 1
    finally:
        # Stopping takes a moment; a second Ctrl-C or kill must not cut it short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if stoppers:
            print("Stopping everything this run started...", file=sys.stderr, flush=True)
        for stop in reversed(stoppers):
            stop()
        if failed or args.keep_logs:
            print(f"Logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
