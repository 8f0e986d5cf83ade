"""Spend control end to end: keys with a budget or rate limits, counted in
moto's DynamoDB by the real AWS SDK, the connector under `cargo lambda watch`,
and the official `openai` SDK as the caller."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import stack
from conftest import AZURE_KEY, SECRET_NAME

SPEND_KEYS_SECRET = "azure-openai-image/spend-client-keys"
BUDGET_KEY = "sk-e2e-budget"
RATE_KEY = "sk-e2e-rate"
TOKENS_KEY = "sk-e2e-tokens"
FREE_KEY = "sk-e2e-free"
SPEND_KEYS = [
    # Ten dall-e-3 standard 1024x1024 images ($0.04 each, reserved and spent).
    {"key": BUDGET_KEY, "name": "budget", "budget": {"usd": 0.40, "period": "day"}},
    {"key": RATE_KEY, "name": "rate", "limits": {"requestsPerMinute": 2, "imagesPerMinute": 10}},
    {"key": TOKENS_KEY, "name": "tokens", "budget": {"usd": 5, "period": "month"}},
    FREE_KEY,
]
DALLE = {"model": "dall-e-3", "prompt": "a lighthouse", "size": "1024x1024", "quality": "standard"}


def seed(moto: stack.Moto) -> None:
    moto.put_secret(SECRET_NAME, '{"apiKey": "%s"}' % AZURE_KEY)
    moto.put_secret(SPEND_KEYS_SECRET, json.dumps(SPEND_KEYS))
    moto.create_usage_table()


@pytest.fixture(scope="module")
def spend_connector(moto, start_connector):
    seed(moto)
    return start_connector(MAX_RETRIES="0", CLIENT_API_KEYS_SECRET_ID=SPEND_KEYS_SECRET, USAGE_TABLE=stack.USAGE_TABLE)


def client(connector, key: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{connector.url}/v1", api_key=key, **{"max_retries": 0, **options})


def item(moto: stack.Moto, name: str) -> dict:
    (found,) = [i for i in moto.usage_items() if i["pk"] == f"key#{name}"]
    return found


def settled(moto: stack.Moto, name: str) -> dict:
    """The key's item once no reservation is outstanding (settling runs after the answer)."""
    for _ in range(200):
        found = item(moto, name)
        if found.get("reserved", 0) == 0:
            return found
        time.sleep(0.05)
    raise AssertionError(f"still reserved: {item(moto, name)}")


def test_twenty_concurrent_requests_against_a_budget_of_ten_let_exactly_ten_through(spend_connector, moto, azure):
    sdk = client(spend_connector, BUDGET_KEY)

    def one(_):
        try:
            sdk.images.generate(**DALLE)
            return "ok"
        except openai.RateLimitError as e:
            assert e.code == "insufficient_quota" and e.type == "insufficient_quota", e
            assert e.response.headers["x-should-retry"] == "false"
            assert "T00:00:00Z" in e.message
            return "refused"

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(one, range(20)))
    assert outcomes.count("ok") == 10, outcomes
    assert outcomes.count("refused") == 10
    assert len([r for r in azure.requests if "dall-e-3" in r["path"]]) == 10, "a refused request never reaches Azure"
    found = settled(moto, "budget")
    assert (found["spent"], found["committed"], found["requests"], found["images"]) == (400_000, 400_000, 10, 10)
    assert found["sk"].startswith("period#") and found["expires_at"] > time.time()


def test_insufficient_quota_is_not_retried_by_the_sdk(spend_connector, moto):
    # The budget key is spent by the test above, or is spent here.
    sdk = client(spend_connector, BUDGET_KEY, max_retries=3)
    before = spend_connector.logs().count('"ErrorCode":"insufficient_quota"')
    for _ in range(11):
        try:
            sdk.images.generate(**DALLE)
        except openai.RateLimitError as e:
            assert e.code == "insufficient_quota"
            break
    else:
        raise AssertionError("the budget never ran out")
    # One refusal logged for the SDK call that got it: x-should-retry: false held its retries back.
    assert spend_connector.logs().count('"ErrorCode":"insufficient_quota"') == before + 1


def test_a_rate_limit_answers_retry_after_and_the_headers(spend_connector):
    sdk = client(spend_connector, RATE_KEY)
    raw = sdk.images.with_raw_response.generate(**DALLE)
    # Two requests in one window: start in a fresh minute if this one is about to end.
    reset = raw.headers["x-ratelimit-reset-requests"]
    if reset.endswith("ms") or (reset.endswith("s") and "m" not in reset and float(reset[:-1]) < 5):
        time.sleep(float(reset[:-2]) / 1000 if reset.endswith("ms") else float(reset[:-1]))
        raw = sdk.images.with_raw_response.generate(**DALLE)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-limit-images"] == "10"
    assert raw.headers["x-ratelimit-remaining-images"] == "9"
    assert raw.headers["x-ratelimit-reset-images"] == raw.headers["x-ratelimit-reset-requests"]
    assert len(raw.parse().data) == 1
    assert client(spend_connector, RATE_KEY).images.with_raw_response.generate(**DALLE).headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.images.generate(**DALLE)
    e = caught.value
    assert e.code == "rate_limit_exceeded" and e.status_code == 429
    assert 1 <= int(e.response.headers["retry-after"]) <= 60
    assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.response.headers["x-ratelimit-limit-requests"] == "2"


def test_a_gpt_image_answer_is_settled_at_its_usage_and_unlimited_keys_are_not_counted(spend_connector, moto):
    client(spend_connector, TOKENS_KEY).images.generate(model="azure-image", prompt="a lighthouse", size="1024x1024", quality="high")
    # The stand-in's usage: 100 text tokens at $5 and 50 output tokens at $40 per 1M.
    found = settled(moto, "tokens")
    assert (found["spent"], found["requests"], found["images"]) == (2_500, 1, 1)
    raw = client(spend_connector, FREE_KEY).images.with_raw_response.generate(**DALLE)
    assert not [h for h in raw.headers if h.startswith("x-ratelimit-")]
    assert {i["pk"] for i in moto.usage_items()} <= {"key#budget", "key#rate", "key#tokens"}


@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_dynamodb_stopped_mid_run(start_connector, log_dir, on_error):
    moto = stack.Moto(log_dir)  # a port of its own, stopped and started by this test
    moto.start()
    try:
        seed(moto)
        connector = start_connector(
            moto_server=moto,
            MAX_RETRIES="0",
            CLIENT_API_KEYS_SECRET_ID=SPEND_KEYS_SECRET,
            USAGE_TABLE=stack.USAGE_TABLE,
            SPEND_LIMITS_ON_ERROR=on_error,
        )
        sdk = client(connector, TOKENS_KEY)
        # Up: counted. The keys are cached from here on, so only DynamoDB goes missing.
        sdk.images.generate(model="azure-image", prompt="a lighthouse")
        assert settled(moto, "tokens")["requests"] == 1
        moto.stop()
        if on_error == "deny":
            with pytest.raises(openai.InternalServerError) as caught:
                sdk.images.generate(model="azure-image", prompt="a lighthouse")
            assert caught.value.status_code == 503 and caught.value.code == "usage_store_unavailable"
            assert caught.value.response.headers["retry-after"] == "1"
        else:
            assert len(sdk.images.generate(model="azure-image", prompt="a lighthouse").data) == 1
            assert '"UsageStoreErrors":1' in connector.logs()
        # Unlimited keys never needed it.
        assert len(client(connector, FREE_KEY).images.generate(**DALLE).data) == 1
    finally:
        moto.stop()


def usage(connector, key: str) -> dict:
    request = urllib.request.Request(f"{connector.url}/v1/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


def test_usage_answers_the_calling_keys_own_figures(spend_connector, moto):
    client(spend_connector, TOKENS_KEY).images.generate(model="azure-image", prompt="a lighthouse")
    found = settled(moto, "tokens")
    mine = usage(spend_connector, TOKENS_KEY)
    assert mine["object"] == "usage" and mine["key"] == "tokens"
    assert mine["period"]["type"] == "month" and mine["period"]["start"] < time.time() < mine["period"]["end"]
    assert mine["budget_usd"] == 5.0
    assert mine["spent_usd"] == found["spent"] / 1e6 and mine["reserved_usd"] == 0.0
    assert mine["remaining_usd"] == pytest.approx(5.0 - found["spent"] / 1e6)
    assert (mine["requests"], mine["images"]) == (found["requests"], found["images"])
    assert "window" not in mine
    limited = usage(spend_connector, RATE_KEY)
    assert limited["key"] == "rate" and limited["window"]["limit_requests"] == 2
    assert usage(spend_connector, FREE_KEY)["spent_usd"] is None
