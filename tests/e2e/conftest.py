"""The end-to-end stage: moto server as Secrets Manager, the strict Azure
stand-in, the connector under `cargo lambda watch`, and the official `openai`
SDK as the caller."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import stack  # noqa: E402
from fake_azure import FakeAzure  # noqa: E402

AZURE_KEY = "azure-e2e-key-4f1c9a"
SECRET_NAME = "azure-openai-image/azure-key"
CLIENT_KEYS_SECRET = "azure-openai-image/client-keys"
CLIENT_KEY = "sk-e2e-client"
TEAM_KEY = "sk-e2e-team-a"
CLIENT_KEYS = json.dumps([CLIENT_KEY, {"key": TEAM_KEY, "name": "team-a", "models": ["azure-image"]}])


@pytest.fixture(scope="session")
def log_dir():
    with tempfile.TemporaryDirectory(prefix="aoi-e2e-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def moto(log_dir):
    server = stack.Moto(log_dir).start()
    server.put_secret(SECRET_NAME, '{"apiKey": "%s"}' % AZURE_KEY)
    server.put_secret(CLIENT_KEYS_SECRET, CLIENT_KEYS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure():
    fake = FakeAzure(stack.fake_deployments(), [AZURE_KEY]).start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def strict_azure(azure):
    """Every test ends with the stand-in having seen only correct upstream requests."""
    azure.reset()
    azure.set_keys([AZURE_KEY])
    yield
    assert azure.violations == [], f"the connector sent Azure a wrong request: {azure.violations}"


@pytest.fixture(scope="session")
def start_connector(moto, azure, log_dir):
    """Starts connectors under cargo lambda watch; stops them all at the end."""
    started = []

    def start(moto_server=moto, **extra):
        settings = {"CLIENT_API_KEYS_SECRET_ID": CLIENT_KEYS_SECRET, **extra}
        env = stack.connector_env(moto_server, stack.image_models(azure.url), SECRET_NAME, **settings)
        connector = stack.Connector(env, log_dir).start()
        started.append(connector)
        return connector

    yield start
    for connector in started:
        connector.stop()


@pytest.fixture(scope="session")
def connector(start_connector):
    # Mapping tests see each upstream answer once; retries have tests of their own.
    return start_connector(MAX_RETRIES="0")


@pytest.fixture
def openai_client(connector):
    import openai

    return openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)


@pytest.fixture
def azure_client(connector):
    import openai

    return openai.AzureOpenAI(azure_endpoint=connector.url, api_key=CLIENT_KEY, api_version="2025-04-01-preview", max_retries=0, timeout=60)
