"""Large relayed answers gzip-compressed on a front door that streams, under
`cargo lambda watch`: the official SDK (which sends `Accept-Encoding: gzip,
deflate`) reads them, and a client that does not ask (curl without
`--compressed`) gets them plain."""

from __future__ import annotations

import base64
import json
import subprocess

import openai
import pytest

from conftest import CLIENT_KEY
from test_images import decode_png

# Four incompressible 1536x1024 PNGs: about 24 MB of base64, past the 8 MiB threshold.
LARGE = {"model": "azure-image", "prompt": "[large] a lighthouse", "n": 4, "size": "1536x1024"}


@pytest.fixture(scope="module")
def streaming(start_connector):
    return start_connector(RESPONSE_MODE="stream", MAX_RETRIES="0")


def test_the_sdk_reads_a_gzip_compressed_answer(streaming):
    sdk = openai.OpenAI(base_url=f"{streaming.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)
    response = sdk.images.with_raw_response.generate(**LARGE)
    assert response.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in response.headers["vary"].lower()
    result = response.parse()
    assert [decode_png(base64.b64decode(image.b64_json)) for image in result.data] == [(1536, 1024)] * 4


def test_curl_without_compressed_gets_the_answer_plain(streaming, tmp_path):
    out, headers = tmp_path / "body", tmp_path / "headers"
    subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body", "--max-time", "120",
         "-o", str(out), "-D", str(headers),
         "-H", f"authorization: Bearer {CLIENT_KEY}", "-H", "content-type: application/json",
         "--data", json.dumps(LARGE), f"{streaming.url}/v1/images/generations"],
        check=True,
    )
    assert "content-encoding" not in headers.read_text().lower()
    body = json.loads(out.read_bytes())
    assert [decode_png(base64.b64decode(image["b64_json"])) for image in body["data"]] == [(1536, 1024)] * 4
