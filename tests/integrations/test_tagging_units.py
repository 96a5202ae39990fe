"""Pure parts of the integrations: merging, identity precedence, tenancy, stream parsing."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

from thunder_middleware.integrations.client import ToolIntent, control_url
from thunder_middleware.integrations.litellm import StreamedToolCalls, program_id_of_kwargs
from thunder_middleware.integrations.litellm_proxy import caller_program_id, tenant_of
from thunder_middleware.integrations.tagging import (
    tool_intents,
    with_program_body,
    with_program_headers,
)


def test_body_merge_keeps_every_other_key_and_does_not_mutate() -> None:
    original = {"min_tokens": 5, "program_id": "old"}
    merged = with_program_body(original, "new")
    assert merged == {"min_tokens": 5, "program_id": "new"}
    assert original["program_id"] == "old"


def test_header_merge_replaces_any_casing() -> None:
    merged = with_program_headers({"x-program-id": "old", "X-Trace": "t"}, "new")
    assert merged == {"X-Trace": "t", "X-Program-Id": "new"}


@pytest.mark.parametrize("url", ["http://h:9", "http://h:9/", "http://h:9/v1", "http://h:9/v1/"])
def test_control_url_accepts_root_or_openai_base(url: str) -> None:
    assert control_url(url) == "http://h:9"


def test_tool_intents_from_openai_objects_dicts_and_langchain_calls() -> None:
    openai_object = SimpleNamespace(function=SimpleNamespace(name="a", arguments='{"x": 1}'))
    openai_dict = {"function": {"name": "b", "arguments": "not json"}}
    langchain_call = {"name": "c", "args": {"y": 2}, "id": "1"}
    nameless = {"function": {"name": ""}}
    assert tool_intents([openai_object, openai_dict, langchain_call, nameless]) == [
        ToolIntent("a", {"x": 1}), ToolIntent("b", "not json"), ToolIntent("c", {"y": 2})]


def test_litellm_identity_precedence() -> None:
    assert program_id_of_kwargs({"metadata": {"program_id": "m"}, "litellm_session_id": "s"}) == "m"
    assert program_id_of_kwargs({"litellm_params": {"metadata": {"program_id": "p"}}}) == "p"
    assert program_id_of_kwargs({"extra_body": {"program_id": "e"}}) == "e"
    assert program_id_of_kwargs({"litellm_session_id": "s"}) == "s"
    assert program_id_of_kwargs({"metadata": {"program_id": ""}}) is None


def test_proxy_identity_precedence() -> None:
    headers = {"proxy_server_request": {"headers": {"x-program-id": "h"}}}
    assert caller_program_id({"metadata": {"program_id": "m"}, "program_id": "b", **headers}) == "m"
    assert caller_program_id({"program_id": "b", **headers}) == "b"
    assert caller_program_id(headers) == "h"
    assert caller_program_id({"metadata": {"session_id": "s"}}) == "s"
    assert caller_program_id({"metadata": {}}) is None


def test_proxy_tenants_never_collide_and_never_show_the_key() -> None:
    from litellm.proxy._types import UserAPIKeyAuth

    team = UserAPIKeyAuth(team_id="team-a", token="hashed-1")
    alias = UserAPIKeyAuth(key_alias="ci-bot", token="hashed-2")
    key_one, key_two = UserAPIKeyAuth(token="hashed-3"), UserAPIKeyAuth(token="hashed-4")
    assert tenant_of(team) == "team-a"
    assert tenant_of(alias) == "ci-bot"
    assert tenant_of(key_one) != tenant_of(key_two)
    assert "hashed-3" not in tenant_of(key_one)
    assert tenant_of(UserAPIKeyAuth()) == "default"


def _chunk(**delta: Any) -> Any:
    finish = delta.pop("finish", None)
    return SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(**delta),
                                                    finish_reason=finish)])


def test_streamed_tool_calls_are_reassembled() -> None:
    collector = StreamedToolCalls()
    call = SimpleNamespace(index=0, function=SimpleNamespace(name="edit", arguments='{"pa'))
    rest = SimpleNamespace(index=0, function=SimpleNamespace(name=None, arguments='th": "a"}'))
    collector.add(_chunk(tool_calls=[call]))
    collector.add(_chunk(tool_calls=[rest]))
    assert not collector.finished
    collector.add(_chunk(tool_calls=None, finish="tool_calls"))
    assert collector.finished
    assert collector.intents() == [ToolIntent("edit", {"path": "a"})]


def test_importing_the_package_imports_no_framework() -> None:
    import subprocess

    code = ("import sys, thunder_middleware.integrations as t; "
            "assert 'litellm' not in sys.modules and 'langchain' not in sys.modules; "
            "t.ThunderClient; assert 'litellm' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
