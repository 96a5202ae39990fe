"""Pure helpers of the sidecar: identity parsing, body checks, SSE framing and usage stripping."""

from __future__ import annotations

import orjson
import pytest

from thunder_middleware.sidecar.backends.base import parse_samples
from thunder_middleware.sidecar.backends.vllm import VLLM_SAMPLES, vllm_metrics
from thunder_middleware.sidecar.errors import APIError
from thunder_middleware.sidecar.identity import (
    ANONYMOUS_PREFIX,
    extract_program_id,
    is_anonymous_key,
    namespaced,
    split_key,
    validate_program_id,
)
from thunder_middleware.sidecar.payload import prepare_request
from thunder_middleware.sidecar.settings import load_settings
from thunder_middleware.sidecar.sse import SSEEventSplitter, filter_event


def test_identity_precedence_body_over_header_over_metadata() -> None:
    body = {"program_id": "from-body", "metadata": {"program_id": "from-meta"}}
    headers = {"x-program-id": "from-header"}
    assert extract_program_id(body, headers).program_id == "from-body"
    assert extract_program_id(body, headers).source == "body"
    del body["program_id"]
    assert extract_program_id(body, headers).program_id == "from-header"
    assert extract_program_id(body, {}).program_id == "from-meta"
    anonymous = extract_program_id({}, {})
    assert anonymous.anonymous and anonymous.program_id.startswith(ANONYMOUS_PREFIX)
    assert extract_program_id({}, {}).program_id != anonymous.program_id


def test_anonymous_keys_cannot_be_forged_by_a_client_id() -> None:
    anonymous = extract_program_id({}, {})
    assert anonymous.program_id.startswith(ANONYMOUS_PREFIX)  # what the caller sees
    assert is_anonymous_key(namespaced("t", anonymous.internal_id))
    with pytest.raises(APIError):  # the internal form is no valid client id
        validate_program_id(anonymous.internal_id, "program_id", 256)
    for chosen in ("anon-1", anonymous.program_id, ANONYMOUS_PREFIX):
        for identity in (extract_program_id({"program_id": chosen}, {}),
                         extract_program_id({}, {"x-program-id": chosen}),
                         extract_program_id({"metadata": {"program_id": chosen}}, {})):
            assert not identity.anonymous and identity.internal_id == chosen
            assert not is_anonymous_key(namespaced("t", identity.internal_id))


@pytest.mark.parametrize("bad", [17, "", "x" * 300, "a\nb", ["list"]])
def test_identity_rejects_bad_ids(bad: object) -> None:
    with pytest.raises(APIError) as caught:
        extract_program_id({"program_id": bad}, {})
    assert caught.value.status_code == 400
    assert caught.value.param == "program_id"


def test_namespacing_round_trip_keeps_slashes_in_ids() -> None:
    key = namespaced("tenant-a", "run/7")
    assert key == "tenant-a/run/7"
    assert split_key(key) == ("tenant-a", "run/7")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "empty_body"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_type"),
        (b'{"messages": "hi"}', "invalid_type"),
        (b'{"messages": []}', "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream_options": 3}', "invalid_type"),
    ],
)
def test_bad_chat_bodies_are_400(raw: bytes, code: str) -> None:
    with pytest.raises(APIError) as caught:
        prepare_request(raw, "chat")
    assert caught.value.status_code == 400
    assert caught.value.code == code


def test_untouched_body_is_forwarded_byte_for_byte() -> None:
    raw = b'{"messages": [{"role": "user", "content": "hello"}], "program_id": "p"}'
    parsed = prepare_request(raw, "chat")
    assert parsed.upstream_body is raw
    assert parsed.prompt_chars == 5
    stripped = prepare_request(raw, "chat", strip_program_id=True)
    assert "program_id" not in orjson.loads(stripped.upstream_body)


def test_streaming_without_usage_asks_for_it_anyway() -> None:
    raw = b'{"prompt": "abc", "stream": true, "stream_options": {"x": 1}}'
    parsed = prepare_request(raw, "completions")
    assert parsed.stream and not parsed.client_wants_usage
    upstream = orjson.loads(parsed.upstream_body)
    assert upstream["stream_options"] == {"x": 1, "include_usage": True}
    asked = prepare_request(
        b'{"prompt": "abc", "stream": true, "stream_options": {"include_usage": true}}',
        "completions",
    )
    assert asked.client_wants_usage and asked.upstream_body.startswith(b'{"prompt"')


def test_sse_splitter_reframes_events_cut_anywhere() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\ndata: [DONE]\n\n'
    splitter = SSEEventSplitter()
    events: list[bytes] = []
    for i in range(0, len(stream), 3):
        events += splitter.feed(stream[i : i + 3])
    assert events == [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]
    assert splitter.remainder() == b""


USAGE_CHUNK = (
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":5,'
    b'"total_tokens":35,"prompt_tokens_details":{"cached_tokens":16}}}\n\n'
)


def test_usage_chunk_is_stripped_when_not_asked_but_counted() -> None:
    filtered = filter_event(USAGE_CHUNK, client_wants_usage=False)
    assert filtered.forward is None
    assert filtered.usage is not None
    assert (filtered.usage.prompt_tokens, filtered.usage.cached_tokens) == (30, 16)
    kept = filter_event(USAGE_CHUNK, client_wants_usage=True)
    assert kept.forward == USAGE_CHUNK and kept.usage == filtered.usage


def test_continuous_usage_is_removed_from_content_chunks_when_not_asked() -> None:
    event = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    )
    filtered = filter_event(event, client_wants_usage=False)
    assert filtered.forward is not None
    assert "usage" not in orjson.loads(filtered.forward[6:])
    assert filtered.usage is not None and filtered.usage.completion_tokens == 1
    plain = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
    assert filter_event(plain, client_wants_usage=False).forward == plain


def test_vllm_capacity_from_cache_config_info() -> None:
    text = (
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="64",engine="0"} 1.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0"} 0.25\n'
        "# TYPE vllm:prefix_cache_queries counter\n"
        'vllm:prefix_cache_queries_total{engine="0"} 200\n'
        "# TYPE vllm:prefix_cache_hits counter\n"
        'vllm:prefix_cache_hits_total{engine="0"} 50\n'
    )
    metrics = vllm_metrics(parse_samples(text), None)
    assert metrics.capacity_tokens == 64 * 16
    assert metrics.kv_usage == 0.25
    assert metrics.prefix_hit_rate == 0.25


def test_vllm_adapter_reads_only_its_lines_and_gets_the_same_metrics() -> None:
    """The scrape hands only the wanted lines to the parser (it runs on the proxying event
    loop); histograms, _created samples and look-alike names must not change the result."""
    text = (
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="64",engine="0"} 1.0\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
        "# TYPE vllm:prefix_cache_hits counter\n"
        'vllm:prefix_cache_hits_total{engine="0"} 50\n'
        'vllm:prefix_cache_hits_created{engine="0"} 1.7e9\n'
        "# TYPE vllm:prefix_cache_queries counter\n"
        'vllm:prefix_cache_queries_total{engine="0"} 200\n'
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        + "".join(f'vllm:time_to_first_token_seconds_bucket{{le="{b}",engine="0"}} {i}\n'
                  for i, b in enumerate(("0.001", "0.01", "0.1", "1.0", "+Inf")))
        + 'vllm:time_to_first_token_seconds_count{engine="0"} 4\n'
        'vllm:time_to_first_token_seconds_sum{engine="0"} 0.5\n'
    )
    filtered = vllm_metrics(parse_samples(text, VLLM_SAMPLES), None)
    assert filtered == vllm_metrics(parse_samples(text), None)
    assert filtered.running == 5.0 and filtered.waiting == 7.0
    assert filtered.capacity_tokens == 64 * 16 and filtered.prefix_hit_rate == 0.25
    assert parse_samples(text, ["vllm:num_requests_waiting"]).values == {
        "vllm:num_requests_waiting": 7.0}


def test_settings_flags_over_environment_over_toml(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "sidecar.toml"
    config.write_text('backends = ["http://a:1"]\nidle_timeout = 30\nlambda_max = 0.9\n')
    monkeypatch.setenv("THUNDER_IDLE_TIMEOUT", "45")
    settings = load_settings(config, lambda_max=0.8, lambda_min=0.7, port=None)
    assert settings.backends == ["http://a:1"]
    assert settings.idle_timeout == 45
    assert settings.lambda_max == 0.8
    monkeypatch.setenv("THUNDER_BACKENDS", "http://x:1, http://y:2/")
    assert load_settings().backends == ["http://x:1", "http://y:2"]
    with pytest.raises(ValueError):
        load_settings(lambda_min=2.0, lambda_max=1.0)


def test_every_policy_setting_reaches_the_policy() -> None:
    from thunder_middleware.sidecar.app import policy_config

    settings = load_settings(check_interval=2.0, decay_base=1.5, tool_halflives=8.0,
                             lambda_max=0.95, lambda_min=0.8, idle_timeout=99.0,
                             starvation_bound=120.0, cost_aware=False)
    config = policy_config(settings)
    assert (config.tick_interval_s, config.decay_base, config.decay_tool_halflives) == (
        2.0, 1.5, 8.0)
    assert (config.lambda_max, config.lambda_min, config.idle_timeout_s) == (0.95, 0.8, 99.0)
    assert (config.starvation_bound_s, config.cost_aware) == (120.0, False)


@pytest.mark.parametrize(
    ("prompt", "hint"),
    [
        ([5, 6, 7, 8], 4),
        ([[1, 2], [3, 4, 5]], 5),
        ("a text prompt", None),
        (["two", "texts"], None),
    ],
)
def test_token_id_prompts_give_the_policy_their_exact_size(
    prompt: object, hint: int | None
) -> None:
    parsed = prepare_request(orjson.dumps({"model": "m", "prompt": prompt}), "completions")
    assert parsed.prompt_tokens_hint == hint
    chat = prepare_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}), "chat")
    assert chat.prompt_tokens_hint is None
