"""Client keys end to end: the official SDKs authenticate with keys from the
client keys secret in (moto's) Secrets Manager."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import CLIENT_KEY, CLIENT_KEYS, CLIENT_KEYS_SECRET, TEAM_KEY


def test_both_sdks_authenticate_with_a_key_from_the_secret(connector):
    openai_client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    assert len(openai_client.images.generate(model="azure-image", prompt="a fox").data) == 1
    azure_client = openai.AzureOpenAI(azure_endpoint=connector.url, api_key=CLIENT_KEY, api_version="2024-10-21", max_retries=0)
    assert azure_client.images.generate(model="dall-e-3", prompt="a fox").data[0].url


@pytest.mark.parametrize("sdk", ["openai", "azure"])
def test_a_wrong_key_raises_authentication_error(connector, azure, sdk):
    if sdk == "openai":
        client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key="sk-not-a-client", max_retries=0)
    else:
        client = openai.AzureOpenAI(azure_endpoint=connector.url, api_key="sk-not-a-client", api_version="2024-10-21", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.images.generate(model="dall-e-3", prompt="a fox")
    assert caught.value.code == "invalid_api_key"
    assert azure.requests == []


def test_no_key_at_all_is_401(connector):
    request = urllib.request.Request(f"{connector.url}/v1/images/generations", data=b'{"prompt":"a fox"}', headers={"content-type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["error"]["code"] == "invalid_api_key"
    with urllib.request.urlopen(f"{connector.url}/health", timeout=30) as health:
        assert health.status == 200, "/health needs no key"


def test_a_model_restricted_key_gets_permission_denied(connector):
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=TEAM_KEY, max_retries=0)
    assert len(client.images.generate(model="azure-image", prompt="a fox").data) == 1
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.images.generate(model="dall-e-3", prompt="a fox")
    assert "dall-e-3" in caught.value.message and TEAM_KEY not in caught.value.message
    assert [m.id for m in client.models.list()] == ["azure-image"]


def test_a_revoked_key_stops_within_the_ttl(start_connector, moto):
    connector = start_connector(SECRET_CACHE_TTL_SECONDS="1")
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=TEAM_KEY, max_retries=0)
    assert len(client.images.generate(model="azure-image", prompt="a fox").data) == 1
    moto.put_secret(CLIENT_KEYS_SECRET, json.dumps([CLIENT_KEY]))
    try:
        time.sleep(1.5)
        with pytest.raises(openai.AuthenticationError):
            client.images.generate(model="azure-image", prompt="a fox")
    finally:
        moto.put_secret(CLIENT_KEYS_SECRET, CLIENT_KEYS)


def test_each_request_logs_one_json_line_and_one_emf_record(start_connector):
    connector = start_connector()
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    response = client.images.with_raw_response.generate(model="azure-image", prompt="a fox", n=2)
    request_id = response.headers["x-request-id"]
    assert response.headers["x-upstream-request-id"] == "fake-apim-0001"
    deadline = time.monotonic() + 10
    while request_id not in connector.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    records = [json.loads(line) for line in connector.logs().splitlines() if line.startswith("{") and request_id in line]
    (log,) = [r for r in records if r.get("message") == "request"]
    (emf,) = [r for r in records if "_aws" in r]
    assert log["status"] == 200 and log["images"] == 2 and log["served_model"] == "azure-image"
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "AzureOpenAIImage"
    assert emf["Model"] == "azure-image" and emf["Images"] == 2 and emf["Requests"] == 1


def test_the_log_names_the_key_never_the_key_itself(start_connector):
    connector = start_connector()
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=TEAM_KEY, max_retries=0)
    client.images.generate(model="azure-image", prompt="a secret prompt about foxes")
    deadline = time.monotonic() + 10
    while '"client":"team-a"' not in connector.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = connector.logs()
    assert '"client":"team-a"' in logs
    assert TEAM_KEY not in logs
    assert "secret prompt" not in logs
