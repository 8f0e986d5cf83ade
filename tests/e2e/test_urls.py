"""response_format "url" for gpt-image end to end: the connector under `cargo
lambda watch` stores each image in moto's S3 (the real AWS signer, the SDK's
credential chain) and answers presigned links, which plain HTTP downloads.
Called by the official SDK, in front of the strict Azure stand-in."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from fake_azure import png  # noqa: E402
from function_url import FunctionUrl  # noqa: E402

from conftest import CLIENT_KEY  # noqa: E402
from test_images import decode_png  # noqa: E402

BUCKET = "aoi-e2e-images"


@pytest.fixture(scope="module")
def url_connector(moto, start_connector):
    moto.create_bucket(BUCKET)
    return start_connector(MAX_RETRIES="0", IMAGE_BUCKET=BUCKET, IMAGE_URL_TTL_SECONDS="900")


@pytest.fixture
def url_client(url_connector):
    return openai.OpenAI(base_url=f"{url_connector.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)


def download(link: str) -> tuple[str, bytes]:
    """A link fetched as any browser would: plain HTTP, no credentials."""
    with urllib.request.urlopen(link, timeout=30) as answer:
        return answer.headers["Content-Type"], answer.read()


def test_n_1_is_a_link_to_the_png_of_the_requested_size(url_client, azure):
    result = url_client.images.generate(model="azure-image", prompt="a lighthouse", size="1536x1024", response_format="url")
    (image,) = result.data
    assert image.b64_json is None
    assert f"/{BUCKET}/images/" in image.url and "X-Amz-Signature=" in image.url and "X-Amz-Expires=900" in image.url
    content_type, data = download(image.url)
    assert content_type == "image/png"
    assert decode_png(data) == (1536, 1024)
    assert result.usage is not None and result.usage.output_tokens == 50, "Azure's usage, passed on"
    assert "response_format" not in azure.requests[0]["body"], "gpt-image takes no response_format"


def test_n_3_is_three_links_to_three_pngs(url_client, azure):
    result = url_client.images.generate(model="azure-image", prompt="a lighthouse", n=3, size="1024x1536", response_format="url")
    assert len(result.data) == 3
    assert len({image.url for image in result.data}) == 3
    for image in result.data:
        content_type, data = download(image.url)
        assert content_type == "image/png"
        assert decode_png(data) == (1024, 1536)
    assert azure.requests[0]["body"]["n"] == 3


def test_an_edit_is_answered_with_a_link_too(url_connector):
    front = FunctionUrl(url_connector.url, "azure-openai-image").start()
    try:
        sdk = openai.OpenAI(base_url=f"{front.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)
        result = sdk.images.edit(model="azure-image", image=("in.png", png(64, 64), "image/png"), prompt="add a hat", size="1024x1024", response_format="url")
    finally:
        front.stop()
    content_type, data = download(result.data[0].url)
    assert content_type == "image/png"
    assert decode_png(data) == (1024, 1024)


def test_without_a_bucket_url_is_a_400_that_says_how_to_enable_it(openai_client, azure):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(model="azure-image", prompt="a lighthouse", response_format="url")
    assert caught.value.param == "response_format"
    assert "IMAGE_BUCKET" in caught.value.message
    assert azure.requests == []


def test_a_bucket_removed_under_the_connector_is_a_502_the_sdk_does_not_retry(moto, start_connector, azure):
    doomed = moto.create_bucket("aoi-e2e-doomed")
    connector = start_connector(MAX_RETRIES="0", IMAGE_BUCKET=doomed)
    # The SDK's own retries on: only x-should-retry: false keeps it from billing the images again.
    sdk = openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=2, timeout=60)
    assert sdk.images.generate(model="azure-image", prompt="a lighthouse", response_format="url").data[0].url
    moto.remove_bucket(doomed)
    azure.reset()
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.images.generate(model="azure-image", prompt="a lighthouse", response_format="url")
    assert caught.value.status_code == 502
    assert caught.value.code == "image_store_failed"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "billed" in caught.value.message
    assert len(azure.requests) == 1, "one generation, never retried"
