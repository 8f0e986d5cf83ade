"""Image edits end to end: the official SDK's `images.edit` through a Function
URL stand-in (tools/function_url.py) in front of `cargo lambda watch`, and
JSON edits through the emulator's own HTTP front, against the strict Azure
stand-in's multipart edits route.

Uploads are binary, and `cargo lambda watch`'s HTTP front refuses a body
that is not UTF-8 before any event exists; the stand-in does what a real
Function URL does instead: a base64 event, within Lambda's 6 MB."""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import urllib.request
import zlib
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from fake_azure import png  # noqa: E402
from function_url import FunctionUrl  # noqa: E402

from conftest import CLIENT_KEY  # noqa: E402


def png_with_alpha(width: int, height: int) -> bytes:
    """A real RGBA PNG: a mask."""
    raw = b"".join(b"\x00" + b"\x00\x00\x00\x00" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def size_of(image: bytes) -> tuple[int, int]:
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", image[16:24])


@pytest.fixture(scope="module")
def front(start_connector):
    # A Function URL with RESPONSE_STREAM, as the template deploys it: `auto` streams its answers.
    connector = start_connector(MAX_RETRIES="0", RESPONSE_MODE="auto")
    url = FunctionUrl(connector.url, "azure-openai-image").start()
    yield url
    url.stop()


@pytest.fixture
def sdk(front):
    return openai.OpenAI(base_url=f"{front.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)


def edits_sent(azure) -> list[dict]:
    return [r for r in azure.requests if r["path"].endswith("/images/edits")]


def test_the_sdk_edits_one_image(sdk, azure, front):
    photo = png(64, 48)
    result = sdk.images.edit(model="azure-image", image=("photo.png", photo, "image/png"), prompt="Add a red scarf", size="1536x1024")
    image = base64.b64decode(result.data[0].b64_json)
    assert size_of(image) == (1536, 1024), "the edited PNG follows size"
    assert result.usage.total_tokens > 0
    (sent,) = edits_sent(azure)
    assert sent["path"] == "/openai/deployments/gpt-image-1/images/edits"
    assert sent["body"]["model"] == "gpt-image-1"
    assert sent["files"] == [("image", "image-1.png", "image/png", len(photo))]
    assert front.events[-1]["base64"], "the upload crossed Lambda base64-encoded, as on a real Function URL"


def test_the_sdk_edits_several_images_with_a_mask(sdk, azure):
    first, second, mask = png(32, 32, 1), png(32, 32, 2), png_with_alpha(32, 32)
    # The SDK declares what it is given; octet-stream here, and the bytes decide.
    result = sdk.images.edit(
        model="azure-image",
        image=[("a.png", first, "application/octet-stream"), ("b.png", second, "application/octet-stream")],
        mask=("mask.png", mask, "application/octet-stream"),
        prompt="Put them side by side",
        n=2,
    )
    assert len(result.data) == 2
    (sent,) = edits_sent(azure)
    assert [f[0] for f in sent["files"]] == ["image[]", "image[]", "mask"]
    assert all(f[2] == "image/png" for f in sent["files"])


def test_the_sdk_streams_an_edit_with_partial_images(sdk, azure):
    stream = sdk.images.edit(model="azure-image", image=("photo.png", png(16, 16), "image/png"), prompt="Add a hat", stream=True, partial_images=2)
    kinds = [event.type for event in stream]
    assert kinds == ["image_edit.partial_image", "image_edit.partial_image", "image_edit.completed"]
    (sent,) = edits_sent(azure)
    assert sent["body"]["stream"] == "true"


def test_the_azure_sdk_edits_through_the_deployments_route(front, azure):
    client = openai.AzureOpenAI(azure_endpoint=front.url, api_key=CLIENT_KEY, api_version="2025-04-01-preview", max_retries=0, timeout=120)
    result = client.images.edit(model="azure-image", image=("photo.png", png(16, 16), "image/png"), prompt="Add a red scarf")
    assert result.data[0].b64_json
    (sent,) = edits_sent(azure)
    assert sent["body"]["model"] == "gpt-image-1"


def test_a_json_edit_with_data_urls_through_the_emulators_own_front(connector, azure):
    photo = png(16, 16)
    body = {
        "model": "azure-image",
        "prompt": "Paint it blue",
        "images": [{"image_url": "data:image/png;base64," + base64.b64encode(photo).decode()}],
    }
    request = urllib.request.Request(
        f"{connector.url}/v1/images/edits",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert answer["data"][0]["index"] == 0
    (sent,) = edits_sent(azure)
    assert sent["files"] == [("image", "image-1.png", "image/png", len(photo))]


def test_an_upload_past_what_lambda_carries_is_refused_and_one_under_it_passes(sdk, front, azure):
    # About 4.7 MB of files fit (README, Limits): base64 makes 4/3 of them, and the event holds 6,291,456 bytes.
    too_large = png(1600, 1200, noise=True)
    assert len(too_large) > 4_800_000
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.images.edit(model="azure-image", image=("big.png", too_large, "image/png"), prompt="p")
    assert refused.value.status_code == 413
    assert edits_sent(azure) == []
    fits = png(1400, 1000, noise=True)
    assert 4_000_000 < len(fits) < 4_700_000
    result = sdk.images.edit(model="azure-image", image=("fits.png", fits, "image/png"), prompt="p")
    assert result.data[0].b64_json
    assert front.events[-1]["bytes"] <= 6 * 1024 * 1024


def test_dall_e_3_edits_are_refused_before_azure(sdk, azure):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.edit(model="dall-e-3", image=("photo.png", png(16, 16), "image/png"), prompt="p")
    assert refused.value.body["param"] == "model"
    assert edits_sent(azure) == []


def test_a_text_file_named_png_is_refused_by_its_bytes(sdk, azure):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.edit(model="azure-image", image=("cat.png", io.BytesIO(b"not a picture at all"), "image/png"), prompt="p")
    assert refused.value.body["code"] == "invalid_image_format"
    assert edits_sent(azure) == []
