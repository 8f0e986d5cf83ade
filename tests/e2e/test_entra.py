"""Entra ID end to end: the connector under `cargo lambda watch`, the real
AWS SDK asking the STS stand-in for a web identity token, reqwest asking the
Entra token-endpoint stand-in for access tokens, and the strict Azure
stand-in accepting only the bearer tokens Entra issued, called by the
official SDK. Also the v1 surface."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import stack  # noqa: E402
from entra import Sts, TokenEndpoint  # noqa: E402

from conftest import CLIENT_KEY  # noqa: E402

TENANT = "tenant-e2e"
CLIENT_SECRET = "entra-client-secret-e2e-77c1"
SECRET_NAME = "azure-openai-image/entra-client-secret"


@pytest.fixture(scope="module")
def identity(moto, azure):
    sts = Sts().start()
    token = TokenEndpoint(TENANT, {
        "client-secret": {"secret": CLIENT_SECRET},
        "client-federated": {"assertion": Sts.TOKEN},
        "client-short": {"secret": CLIENT_SECRET},
        "client-down": {"secret": CLIENT_SECRET, "mode": "down"},
        "client-refused": {"secret": CLIENT_SECRET, "mode": "refuse"},
    }).start()
    moto.put_secret(SECRET_NAME, json.dumps({"clientSecret": CLIENT_SECRET}))
    azure.deployments["entra-dep"] = {"model": "gpt-image-1", "api_version": "2025-04-01-preview", "auth": "entra"}
    azure.deployments["v1-dep"] = {"model": "gpt-image-1", "surface": "v1", "auth": "entra"}
    yield token, sts
    token.stop()
    sts.stop()


@pytest.fixture(scope="module")
def entra_connector(start_connector, identity, azure):
    token, sts = identity
    base = f"{azure.url}/openai/deployments/entra-dep"

    def entry(name: str, client: str, **auth) -> dict:
        return {"name": name, "model": "gpt-image-1", "baseURL": base, "apiVersion": "2025-04-01-preview",
                "auth": {"type": "entra", "tenantId": TENANT, "clientId": client, **auth}}

    # The usual models too: the client keys' secret names `azure-image`.
    models = stack.image_models(azure.url) + [
        entry("entra-secret", "client-secret", clientSecretSecretId=SECRET_NAME),
        entry("entra-federated", "client-federated", federation="aws"),
        entry("entra-short", "client-short", clientSecretSecretId=SECRET_NAME),
        entry("entra-down", "client-down", clientSecretSecretId=SECRET_NAME),
        entry("entra-refused", "client-refused", clientSecretSecretId=SECRET_NAME),
        {"name": "entra-v1", "model": "gpt-image-1", "baseURL": f"{azure.url}/openai/v1", "deployment": "v1-dep",
         "auth": {"type": "entra", "tenantId": TENANT, "clientId": "client-secret", "clientSecretSecretId": SECRET_NAME}},
    ]
    return start_connector(
        MAX_RETRIES="0",
        IMAGE_MODELS=json.dumps(models),
        AZURE_AUTHORITY_HOST=token.url,
        AWS_ENDPOINT_URL_STS=sts.url,
    )


@pytest.fixture
def sdk(entra_connector, identity, azure):
    token, sts = identity
    token.token = "entra-token-A"
    token.expires_in = 3599
    azure.set_tokens(["entra-token-A"])
    yield openai.OpenAI(base_url=f"{entra_connector.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)
    assert token.violations == [], token.violations
    assert sts.violations == [], sts.violations


def test_a_client_secret_from_secrets_manager_gets_one_token_for_many_requests(sdk, identity, azure):
    token, _ = identity
    before = token.calls_for("client-secret")
    for _ in range(3):
        assert sdk.images.generate(model="entra-secret", prompt="a fox").data[0].b64_json
    assert token.calls_for("client-secret") - before <= 1, "cached: at most the first request fetches"
    sent = [r for r in azure.requests if r["path"].endswith("/entra-dep/images/generations")]
    assert sent and all(r["bearer_ok"] for r in sent)


def test_federation_sends_the_aws_web_identity_token_as_the_client_assertion(sdk, identity, azure):
    token, sts = identity
    for _ in range(2):
        assert sdk.images.generate(model="entra-federated", prompt="a fox").data[0].b64_json
    assert token.calls_for("client-federated") == 1
    assert sts.calls() == 1, "STS only when an Entra token is needed"
    (call,) = sts.requests
    assert call["form"]["Audience.member.1"] == "api://AzureADTokenExchange"
    (fetch,) = [r for r in token.requests if r["form"].get("client_id") == "client-federated"]
    assert fetch["form"]["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in fetch["form"]


def test_the_v1_surface_names_the_deployment_in_the_body(sdk, azure):
    assert sdk.images.generate(model="entra-v1", prompt="a fox", n=2).data[1].b64_json
    sent = [r for r in azure.requests if r["path"] == "/openai/v1/images/generations"]
    assert sent and sent[-1]["body"]["model"] == "v1-dep"
    assert "api-version" not in sent[-1]["query"]


def test_a_token_near_its_end_is_fetched_again(sdk, identity):
    token, _ = identity
    token.expires_in = 300  # no more than the five minutes the connector keeps in hand
    for _ in range(2):
        assert sdk.images.generate(model="entra-short", prompt="a fox").data[0].b64_json
    assert token.calls_for("client-short") == 2


def test_a_revoked_token_is_fetched_again_once(sdk, identity, azure):
    token, _ = identity
    sdk.images.generate(model="entra-secret", prompt="warm the cache")
    token.token = "entra-token-B"
    azure.set_tokens(["entra-token-B"])  # A is revoked
    before = token.calls_for("client-secret")
    assert sdk.images.generate(model="entra-secret", prompt="a fox").data[0].b64_json
    assert token.calls_for("client-secret") - before == 1


def test_entra_down_is_a_503_with_retry_after(sdk):
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(model="entra-down", prompt="a fox")
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "credentials_unavailable"
    assert caught.value.response.headers.get("retry-after")


def test_entra_refusing_is_a_500_and_the_secret_appears_nowhere(sdk, entra_connector):
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(model="entra-refused", prompt="a fox")
    assert caught.value.status_code == 500
    assert caught.value.body["code"] == "upstream_auth_misconfigured"
    assert CLIENT_SECRET not in caught.value.response.text
    logs = entra_connector.logs()
    assert "AADSTS7000215" in logs, "the log names Entra's code"
    assert CLIENT_SECRET not in logs and "entra-token-" not in logs
