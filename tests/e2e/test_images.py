"""The connector under `cargo lambda watch`, called by the official OpenAI and
AzureOpenAI SDKs, in front of moto (Secrets Manager) and the strict Azure stand-in."""

from __future__ import annotations

import base64
import json
import struct
import urllib.request
import zlib

import openai
import pytest

from conftest import AZURE_KEY, CLIENT_KEY, CLIENT_KEYS_SECRET, SECRET_NAME


def decode_png(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking it decodes: signature, chunk
    CRCs, and IDAT inflating to exactly the rows the header promises."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, colour = header[:4]
    channels = {2: 3, 6: 4}[colour]
    assert len(zlib.decompress(idat)) == height * (1 + width * channels * depth // 8)
    return width, height


def test_gpt_image_with_n_2_returns_two_decodable_pngs_of_the_requested_size(openai_client, azure):
    result = openai_client.images.generate(model="azure-image", prompt="a lighthouse at dawn", n=2, size="1536x1024", quality="low")
    assert len(result.data) == 2
    for image in result.data:
        assert decode_png(base64.b64decode(image.b64_json)) == (1536, 1024)
    assert result.size == "1536x1024"
    assert result.usage is not None and result.usage.output_tokens == 100
    sent = azure.requests[0]
    assert sent["path"] == "/openai/deployments/gpt-image-1/images/generations"
    assert sent["query"] == {"api-version": ["2025-04-01-preview"]}
    assert sent["api_key_ok"]
    assert sent["body"]["model"] == "gpt-image-1"
    assert sent["body"]["n"] == 2


def test_dall_e_3_returns_a_url_by_default(openai_client, azure):
    result = openai_client.images.generate(model="dall-e-3", prompt="a lighthouse", size="1792x1024", quality="hd", style="natural")
    image = result.data[0]
    assert image.revised_prompt == "A revised prompt"
    with urllib.request.urlopen(image.url, timeout=10) as r:
        assert decode_png(r.read()) == (1792, 1024)
    assert "response_format" not in azure.requests[0]["body"]


def test_dall_e_3_returns_b64_json_when_asked(openai_client):
    result = openai_client.images.generate(model="dall-e-3", prompt="a lighthouse", response_format="b64_json")
    assert decode_png(base64.b64decode(result.data[0].b64_json)) == (1024, 1024)
    assert result.data[0].url is None


def test_azure_sdk_on_the_deployments_route(azure_client, azure):
    result = azure_client.images.generate(model="gpt-image-1", prompt="a lighthouse", n=3, size="1024x1536")
    assert [decode_png(base64.b64decode(d.b64_json)) for d in result.data] == [(1024, 1536)] * 3
    assert azure.requests[0]["path"] == "/openai/deployments/gpt-image-1/images/generations"


def test_azure_sdk_on_the_seed_path_with_a_configured_name(connector, azure):
    client = openai.AzureOpenAI(azure_endpoint=f"{connector.url}/openai", api_key=CLIENT_KEY, api_version="2024-10-21", max_retries=0)
    result = client.images.generate(model="dall-e-3", prompt="a lighthouse", response_format="b64_json")
    assert decode_png(base64.b64decode(result.data[0].b64_json)) == (1024, 1024)
    # The client's api-version is not what goes upstream: the configured one is.
    assert azure.requests[0]["query"] == {"api-version": ["2024-10-21"]}


@pytest.mark.parametrize(
    "model, params, param",
    [
        ("dall-e-3", {"n": 2}, "n"),
        ("dall-e-3", {"size": "1536x1024"}, "size"),
        ("dall-e-3", {"quality": "high"}, "quality"),
        ("azure-image", {"style": "vivid"}, "style"),
        ("azure-image", {"response_format": "url"}, "response_format"),
        ("azure-image", {"size": "1792x1024"}, "size"),
        ("azure-image", {"n": 11}, "n"),
        ("azure-image", {"prompt": "x" * 32001}, "prompt"),
    ],
)
def test_validation_errors_are_400_with_their_param(openai_client, azure, model, params, param):
    kwargs = {"prompt": "a lighthouse", **params}
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(model=model, **kwargs)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert azure.requests == [], "a bad request must not reach Azure"


def test_content_filter_is_400_content_policy_violation_with_filter_results(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(model="dall-e-3", prompt="[content-filter] a lighthouse")
    assert caught.value.code == "content_policy_violation"
    inner = caught.value.body["inner_error"]
    assert inner["code"] == "ResponsibleAIPolicyViolation"
    assert inner["content_filter_results"]["violence"]["filtered"] is True


def test_gpt_image_moderation_keeps_its_code(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(model="azure-image", prompt="[moderation] a lighthouse")
    assert caught.value.code == "moderation_blocked"


def test_unknown_model_is_404_model_not_found(openai_client, azure_client, azure):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.images.generate(model="gpt-image-9", prompt="a lighthouse")
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        azure_client.images.generate(model="no-such-deployment", prompt="a lighthouse")
    assert caught.value.code == "model_not_found"
    assert azure.requests == []


def test_rate_limit_is_429_with_retry_after(openai_client):
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.images.generate(model="azure-image", prompt="[rate-limit] a lighthouse")
    assert caught.value.response.headers["retry-after"] == "7"


def test_upstream_failures_are_502(openai_client):
    for prompt in ["[server-error] x", "[not-json] x"]:
        with pytest.raises(openai.InternalServerError) as caught:
            openai_client.images.generate(model="azure-image", prompt=prompt)
        assert caught.value.status_code == 502
        assert "127.0.0.1" not in json.dumps(caught.value.body)


def test_model_list_names_the_configured_models(openai_client):
    assert [m.id for m in openai_client.models.list()] == ["azure-image", "dall-e-3", "gpt-image-nostream"]


def test_error_bodies_carry_the_gateway_fields(connector):
    request = urllib.request.Request(
        f"{connector.url}/v1/images/generations", data=b'{"model":"dall-e-3","prompt":"x","n":4}', headers={"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    body = json.loads(caught.value.read())
    assert body["status_code"] == 400
    assert body["extra_fields"] == {"provider": "azure", "model_requested": "dall-e-3", "request_type": "image_generation"}
    assert caught.value.headers["x-request-id"]


def test_many_requests_make_one_get_secret_value(start_connector, moto):
    connector = start_connector()
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    before = {s: moto.get_secret_value_calls(s) for s in (SECRET_NAME, CLIENT_KEYS_SECRET)}
    for _ in range(8):
        client.images.generate(model="azure-image", prompt="a lighthouse")
    assert moto.get_secret_value_calls(SECRET_NAME) - before[SECRET_NAME] == 1
    assert moto.get_secret_value_calls(CLIENT_KEYS_SECRET) - before[CLIENT_KEYS_SECRET] == 1


def test_a_rotated_azure_key_is_picked_up_after_a_401(start_connector, moto, azure):
    connector = start_connector()
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    client.images.generate(model="azure-image", prompt="before rotation")
    rotated = AZURE_KEY + "-rotated"
    moto.put_secret(SECRET_NAME, rotated)
    azure.set_keys([rotated])
    try:
        result = client.images.generate(model="azure-image", prompt="after rotation")
        assert len(result.data) == 1
        assert [r["api_key_ok"] for r in azure.requests] == [True, False, True]
    finally:
        moto.put_secret(SECRET_NAME, '{"apiKey": "%s"}' % AZURE_KEY)


def test_secrets_manager_down_is_503_secrets_unavailable(start_connector, log_dir):
    import stack

    dead = stack.Moto(log_dir, port=stack.free_port())  # never started: nothing listens there
    connector = start_connector(moto_server=dead)
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model="azure-image", prompt="a lighthouse")
    assert caught.value.status_code == 503
    assert caught.value.code == "secrets_unavailable"
    assert AZURE_KEY not in connector.logs()
    assert "a lighthouse" not in connector.logs(), "prompts are never logged"


def test_a_transient_upstream_failure_is_retried_and_served(start_connector, azure):
    connector = start_connector()  # MAX_RETRIES at its default
    client = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    response = client.images.with_raw_response.generate(model="azure-image", prompt="[flaky] a lighthouse")
    assert response.headers["x-served-model"] == "azure-image"
    assert len(response.parse().data) == 1
    assert len(azure.requests) == 2
