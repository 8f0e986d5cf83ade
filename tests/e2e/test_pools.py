"""Several Azure deployments behind one model name, end to end: the connector
under `cargo lambda watch`, the official `openai` SDK sending bursts, and the
strict Azure stand-in enforcing a quota of 5 images per rolling minute on each
deployment, answering Azure's 429 past it."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import stack
from conftest import AZURE_KEY, CLIENT_KEY, SECRET_NAME
from fake_azure import FakeAzure

QUOTA = 5
# The shared client keys name `azure-image`, which these connectors do not serve.
POOL_CLIENT_KEYS = "azure-openai-image/pool-client-keys"
POOL = ("east", "west", "north")


@pytest.fixture(scope="module")
def quota_azure():
    deployments = {name: {"model": "gpt-image-1", "api_version": "2025-04-01-preview", "images_per_minute": QUOTA} for name in POOL}
    deployments["spare"] = {"model": "gpt-image-1", "api_version": "2025-04-01-preview"}
    fake = FakeAzure(deployments, [AZURE_KEY]).start()
    yield fake
    fake.stop()


@pytest.fixture
def pooled(moto, quota_azure, log_dir):
    """A connector of its own (its pools start knowing nothing) with fresh quotas:
    `pooled` over east, west and north; `half-down` over a port that refuses
    connections and spare."""
    quota_azure.reset()
    quota_azure.reset_quotas()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}/openai/deployments/down"
    item = lambda name: {"baseURL": quota_azure.base_url(name), "apiVersion": "2025-04-01-preview", "name": name}
    models = [
        {"name": "pooled", "model": "gpt-image-1", "deployments": [item(name) for name in POOL]},
        {"name": "half-down", "model": "gpt-image-1", "deployments": [
            {"baseURL": refused, "apiVersion": "2025-04-01-preview", "name": "down", "weight": 1000}, item("spare")]},
    ]
    moto.put_secret(POOL_CLIENT_KEYS, json.dumps([CLIENT_KEY]))
    env = stack.connector_env(moto, models, SECRET_NAME, CLIENT_API_KEYS_SECRET_ID=POOL_CLIENT_KEYS)
    connector = stack.Connector(env, log_dir).start()
    yield connector
    connector.stop()
    assert quota_azure.violations == [], quota_azure.violations


def burst(connector, requests: int, model: str = "pooled") -> tuple[list, list]:
    """`requests` one-image generations at once: the successes, and the errors."""
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)

    def one(i: int):
        try:
            return client.images.generate(model=model, prompt=f"burst image {i}", size="1024x1024", quality="low")
        except openai.APIStatusError as e:
            return e

    with ThreadPoolExecutor(max_workers=requests) as pool:
        results = list(pool.map(one, range(requests)))
    return [r for r in results if not isinstance(r, Exception)], [r for r in results if isinstance(r, Exception)]


def request_lines(connector) -> list[dict]:
    """The connector's request log lines."""
    lines = []
    for text in connector.logs().splitlines():
        start = text.find("{")
        if start < 0:
            continue
        try:
            line = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("message") == "request":
            lines.append(line)
    return lines


def waits(line: dict) -> list[int]:
    return json.loads(line["upstream_waits_ms"])


def test_a_burst_of_15_over_three_deployments_of_5_a_minute_all_succeed_without_a_wait(pooled, quota_azure):
    successes, errors = burst(pooled, 15)
    assert errors == [], [f"{e.status_code}: {e.message}" for e in errors]
    assert len(successes) == 15
    assert all(len(r.data) == 1 and r.data[0].b64_json for r in successes)
    assert quota_azure.served == {name: QUOTA for name in POOL}, "spread over all three"
    lines = [line for line in request_lines(pooled) if line.get("model") == "pooled"]
    assert len(lines) == 15
    assert all(w == 0 for line in lines for w in waits(line)), "no success came after a wait"
    assert {line["pool_deployment"] for line in lines} == set(POOL)


def test_a_burst_of_20_gives_15_successes_and_5_clean_429s_with_retry_after(pooled, quota_azure):
    successes, errors = burst(pooled, 20)
    assert len(successes) == 15
    assert len(errors) == 5
    for e in errors:
        assert isinstance(e, openai.RateLimitError), f"{e.status_code}: {e.message}"
        body = e.response.json()
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert set(body["error"]) >= {"message", "type", "param", "code"}
        retry_after = int(e.response.headers["retry-after"])
        assert 1 <= retry_after <= 61, retry_after
        assert "127.0.0.1" not in e.message and AZURE_KEY not in e.message
    assert quota_azure.served == {name: QUOTA for name in POOL}
    lines = [line for line in request_lines(pooled) if line.get("model") == "pooled"]
    assert all(w == 0 for line in lines for w in waits(line)), "a minute's cooldown is never waited out"


def test_a_deployment_that_refuses_connections_leaves_the_request_to_the_others(pooled, quota_azure):
    client = openai.OpenAI(base_url=f"{pooled.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)
    for i in range(4):
        result = client.images.generate(model="half-down", prompt=f"image {i}", size="1024x1024", quality="low")
        assert len(result.data) == 1
    assert quota_azure.served == {"spare": 4}
    lines = [line for line in request_lines(pooled) if line.get("model") == "half-down"]
    attempts = [a for line in lines for a in json.loads(line["upstream"])]
    # Picked by its weight, refused, and the request went on at once to spare.
    assert any(a.startswith("half-down@down:none:upstream_unreachable") for a in attempts), attempts
    assert all(line["pool_deployment"] == "spare" for line in lines)
    assert all(w == 0 for line in lines for w in waits(line))
