"""Secrets Manager stopped and restarted under a running connector: no
poisoned cache at first use, a cached key keeps serving through an outage,
and requests recover when the service comes back."""

from __future__ import annotations

import time

import openai
import pytest

import stack
from conftest import AZURE_KEY, CLIENT_KEY, CLIENT_KEYS, CLIENT_KEYS_SECRET, SECRET_NAME


def seed(moto: stack.Moto) -> None:
    moto.put_secret(SECRET_NAME, '{"apiKey": "%s"}' % AZURE_KEY)
    moto.put_secret(CLIENT_KEYS_SECRET, CLIENT_KEYS)


def generate(client: openai.OpenAI):
    return client.images.generate(model="azure-image", prompt="a lighthouse")


def test_secrets_manager_outages_and_recovery(start_connector, log_dir):
    moto = stack.Moto(log_dir)  # a port of its own, started and stopped by this test
    connector = start_connector(moto_server=moto, SECRET_CACHE_TTL_SECONDS="1")
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    try:
        # Down at first use: 503, and nothing cached.
        with pytest.raises(openai.InternalServerError) as caught:
            generate(client)
        assert caught.value.status_code == 503 and caught.value.code == "secrets_unavailable"
        assert caught.value.response.headers["retry-after"] == "1"

        # Back: the next request fetches and succeeds.
        moto.start()
        seed(moto)
        assert len(generate(client).data) == 1

        # Down again after the TTL: the cached keys keep serving, with a warning.
        time.sleep(1.2)
        moto.stop()
        assert len(generate(client).data) == 1
        assert "serving the cached value" in connector.logs()

        # Back again: once the grace period passes, the keys are fetched anew.
        moto.start()
        seed(moto)
        time.sleep(1.2)
        before = moto.get_secret_value_calls(SECRET_NAME)
        assert len(generate(client).data) == 1
        assert moto.get_secret_value_calls(SECRET_NAME) == before + 1
    finally:
        moto.stop()
