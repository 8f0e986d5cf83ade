"""`stream: true` and responses past 6 MB, under `cargo lambda watch`, with
the official OpenAI SDK iterating the events."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest

from conftest import CLIENT_KEY
from test_images import decode_png


@pytest.fixture(scope="module")
def streaming(start_connector):
    """A connector whose answers stream (a Function URL with RESPONSE_STREAM)."""
    return start_connector(RESPONSE_MODE="stream", MAX_RETRIES="0")


@pytest.fixture(scope="module")
def buffered(start_connector):
    """A connector behind a front door that buffers (HTTP API): 6 MB at most."""
    return start_connector(RESPONSE_MODE="buffered", MAX_RETRIES="0")


def client(connector) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{connector.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=120)


def test_gpt_image_streams_partials_then_one_completed_event_per_image(streaming, azure):
    started = time.monotonic()
    arrivals = []
    events = []
    for event in client(streaming).images.generate(model="azure-image", prompt="a lighthouse", n=2, size="1536x1024", partial_images=2, stream=True):
        arrivals.append(time.monotonic() - started)
        events.append(event)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"] + ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events if e.type.endswith("partial_image")] == [0, 1, 0, 1]
    completed = [e for e in events if e.type == "image_generation.completed"]
    for event in completed:
        assert decode_png(base64.b64decode(event.b64_json)) == (1536, 1024)
        assert event.size == "1536x1024" and event.output_format == "png"
    assert completed[-1].usage.total_tokens == 150
    # Relayed as they come: the first event long before the last (the stand-in pauses 50 ms per partial).
    assert arrivals[-1] - arrivals[0] > 0.1, arrivals
    sent = azure.requests[0]["body"]
    assert sent["stream"] is True and sent["partial_images"] == 2


def test_dall_e_3_streams_completed_events_from_one_buffered_call(streaming, azure):
    events = list(client(streaming).images.generate(model="dall-e-3", prompt="a lighthouse", stream=True))
    assert [e.type for e in events] == ["image_generation.completed"]
    assert decode_png(base64.b64decode(events[0].b64_json)) == (1024, 1024)
    sent = azure.requests[0]["body"]
    assert "stream" not in sent and sent["response_format"] == "b64_json"


def test_a_deployment_that_refuses_stream_is_served_from_buffered_calls(streaming, azure):
    for _ in range(2):
        events = list(client(streaming).images.generate(model="gpt-image-nostream", prompt="a lighthouse", n=2, partial_images=1, stream=True))
        assert [e.type for e in events] == ["image_generation.completed"] * 2
    # Probed once, then remembered: refused, buffered, buffered.
    assert [("stream" in r["body"]) for r in azure.requests] == [True, False, False]


def test_a_failure_mid_stream_ends_in_an_error_event(streaming):
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for event in client(streaming).images.generate(model="azure-image", prompt="[break-stream] a lighthouse", partial_images=2, stream=True):
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]
    assert "error while generating" in caught.value.message


def test_failures_before_the_stream_are_plain_http_errors(streaming):
    with pytest.raises(openai.BadRequestError) as caught:
        client(streaming).images.generate(model="dall-e-3", prompt="[content-filter] x", stream=True)
    assert caught.value.code == "content_policy_violation"


def test_a_response_past_6_mb_arrives_whole_through_the_streaming_path(streaming):
    response = client(streaming).images.with_raw_response.generate(model="azure-image", prompt="[large] a lighthouse", n=4, size="1536x1024")
    raw = response.http_response.content
    assert len(raw) > 6 * 1024 * 1024 * 3, len(raw)
    images = json.loads(raw)["data"]
    assert [decode_png(base64.b64decode(i["b64_json"])) for i in images] == [(1536, 1024)] * 4


def test_the_buffered_path_answers_a_clear_413_instead(buffered):
    with pytest.raises(openai.APIStatusError) as caught:
        client(buffered).images.generate(model="azure-image", prompt="[large] a lighthouse", n=4, size="1536x1024")
    assert caught.value.status_code == 413
    assert caught.value.code == "response_too_large"
    assert "streaming endpoint" in caught.value.message


def test_a_small_answer_fits_the_buffered_path(buffered):
    result = client(buffered).images.generate(model="azure-image", prompt="a lighthouse", n=2)
    assert len(result.data) == 2
    events = list(client(buffered).images.generate(model="azure-image", prompt="a lighthouse", stream=True))
    assert [e.type for e in events] == ["image_generation.completed"]
