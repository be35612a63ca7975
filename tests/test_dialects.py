"""server/responses.py and server/anthropic.py without a server: request bodies -> the chat-completions body
they mean (then validated by protocol.parse_chat_request, the one validation layer), replies -> each
dialect's objects and stream events, errors in each dialect's shape."""

from __future__ import annotations

import json

import pytest

from edgeinfer.server import anthropic as A
from edgeinfer.server import responses as R
from edgeinfer.server.protocol import RequestError, parse_chat_request
from edgeinfer.toolcalls import ChatDelta, ChatResult, ToolCall, ToolCallDelta


def events(data: bytes) -> list[dict]:
    out = []
    for block in data.decode().split("\n\n"):
        if block.strip():
            kind, payload = block.split("\n", 1)
            d = json.loads(payload[len("data: "):])
            assert kind == f"event: {d['type']}"
            out.append(d)
    return out


# -- Responses


def test_responses_request_mapping():
    body = {"model": "m", "instructions": "Be brief.", "max_output_tokens": 7, "temperature": 0.2, "top_p": 0.9,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                      {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"city\":\"Paris\"}"},
                      {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                      {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
                      {"role": "user", "content": "Thanks"}],
            "tools": [{"type": "function", "name": "get", "parameters": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "function", "name": "get"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}}  # fmt: skip
    chat = R.to_chat_body(body)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert chat["messages"][2]["tool_calls"][0]["function"] == {"name": "get", "arguments": "{\"city\":\"Paris\"}"}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert chat["max_tokens"] == 7 and chat["temperature"] == 0.2 and chat["top_p"] == 0.9
    assert chat["tools"] == [{"type": "function", "function": {"name": "get", "parameters": {"type": "object", "properties": {}}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get"}}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    req = parse_chat_request(chat, 1000)  # the chat validation takes it whole
    assert req.max_tokens == 7 and req.messages[3]["tool_call_id"] == "c1"
    assert R.to_chat_body({"input": "hi"})["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, param", [
    ({}, "input"), ({"input": []}, "input"), ({"input": 3}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"input": [{"type": "web_search_call"}]}, "input"),
    ({"input": "x", "instructions": 3}, "instructions"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
])  # fmt: skip
def test_responses_request_errors(body, param):
    with pytest.raises(RequestError) as e:
        R.to_chat_body(body)
    assert e.value.param == param


def test_responses_validation_errors_name_responses_fields():
    for body, param in (({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
                        ({"input": "x", "temperature": -1}, "temperature")):  # fmt: skip
        with pytest.raises(RequestError) as e:
            parse_chat_request(R.to_chat_body(body), 1000)
        err = R.rename_error(e.value)
        assert err.param == param and "max_tokens'" not in err.message


def test_responses_stream_events():
    s = R.ResponseStream("resp_1", 1, "m", {"input": "x"})
    out = events(s.start())
    out += events(s.delta(ChatDelta(reasoning="hmm")))
    out += events(s.delta(ChatDelta(content="Hel")) + s.delta(ChatDelta(content="lo")))
    out += events(s.delta(ChatDelta(tool_call=ToolCallDelta(0, "call_1", "get"))))
    out += events(s.delta(ChatDelta(tool_call=ToolCallDelta(0, arguments="{\"a\":")))
                  + s.delta(ChatDelta(tool_call=ToolCallDelta(0, arguments="1}"))))
    out += events(s.finish("tool_calls", 5, 9))
    types = [e["type"] for e in out]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    final = out[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][1]["content"][0]["text"] == "Hello"
    assert final["output"][2]["arguments"] == "{\"a\":1}" and final["output"][2]["call_id"] == "call_1"
    assert final["usage"]["total_tokens"] == 14 and final["status"] == "completed"
    cut = R.ResponseStream("resp_2", 1, "m", {})
    tail = events(cut.start() + cut.finish("length", 1, 2))
    assert tail[-1]["type"] == "response.incomplete" and tail[-1]["response"]["output"][0]["type"] == "message"


def test_responses_object():
    res = ChatResult("hi", [ToolCall("call_1", "get", "{}")], reasoning="r", finish_reason="tool_calls")
    items = R.output_items(res)
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call"]
    obj = R.response_object("resp_1", 1, "m", {"instructions": "x"}, items, "completed", R.usage(3, 4))
    assert obj["object"] == "response" and obj["instructions"] == "x" and obj["usage"]["output_tokens"] == 4


# -- Anthropic


def test_anthropic_request_mapping():
    body = {"model": "m", "max_tokens": 9, "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["\n"],
            "temperature": 0.5, "top_k": 3, "thinking": {"type": "enabled", "budget_tokens": 64},
            "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [{"role": "user", "content": "Weather?"},
                         {"role": "assistant", "content": [{"type": "thinking", "thinking": "..."},
                                                           {"type": "text", "text": "Let me look."},
                                                           {"type": "tool_use", "id": "t1", "name": "get", "input": {"c": 1}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                       "content": [{"type": "text", "text": "sunny"}]},
                                                      {"type": "text", "text": "And tomorrow?"}]}]}  # fmt: skip
    chat = A.to_chat_body(body)
    msgs = chat["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "user"]
    assert msgs[2]["content"] == "Let me look." and msgs[2]["tool_calls"][0]["function"]["arguments"] == "{\"c\": 1}"
    assert msgs[3] == {"role": "tool", "tool_call_id": "t1", "content": "sunny"} and msgs[4]["content"] == "And tomorrow?"
    assert chat["stop"] == ["\n"] and chat["max_tokens"] == 9 and chat["top_k"] == 3 and chat["reasoning_budget"] == 64
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    req = parse_chat_request(chat, 1000)
    assert req.stop == ["\n"] and req.params.top_k == 3
    assert A.to_chat_body({"messages": [{"role": "user", "content": "x"}]}, count_only=True)["messages"][0]["content"] == "x"


@pytest.mark.parametrize("body, words", [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 3, "messages": []}, "messages"),
    ({"max_tokens": 3, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"max_tokens": 3, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
    ({"max_tokens": 3, "system": 5, "messages": [{"role": "user", "content": "x"}]}, "system"),
    ({"max_tokens": 3, "tools": [{"type": "web_search_20250305", "name": "s"}], "messages": [{"role": "user", "content": "x"}]}, "server tool"),
    ({"max_tokens": 3, "tool_choice": {"type": "maybe"}, "messages": [{"role": "user", "content": "x"}]}, "tool_choice"),
])  # fmt: skip
def test_anthropic_request_errors(body, words):
    with pytest.raises(RequestError) as e:
        A.to_chat_body(body)
    assert words in e.value.message
    err = A.from_request_error(e.value)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"


def test_anthropic_error_shapes():
    assert A.error_body("gone", 404) == {"type": "error", "error": {"type": "not_found_error", "message": "gone"}}
    assert A.error_body("busy", 503)["error"]["type"] == "overloaded_error"
    assert A.error_body("key", 401)["error"]["type"] == "authentication_error"
    e = RequestError("'temperature' = -1 is out of range", "temperature")
    assert A.from_request_error(e)["error"]["message"] == "'temperature' = -1 is out of range"


def test_anthropic_message_and_stream():
    res = ChatResult("It is", [ToolCall("call_1", "get", "{\"c\": 1}")], reasoning="hmm", finish_reason="tool_calls")
    m = A.message_object("msg_1", "m", res, 4, 6)
    assert [b["type"] for b in m["content"]] == ["thinking", "text", "tool_use"]
    assert m["content"][2]["input"] == {"c": 1} and m["stop_reason"] == "tool_use"
    assert m["usage"] == {"input_tokens": 4, "output_tokens": 6}
    assert A.stop_reason("length") == "max_tokens" and A.stop_reason("stop") == "end_turn"
    s = A.MessageStream("msg_1", "m", 4)
    out = events(s.start() + s.delta(ChatDelta(reasoning="hm")) + s.delta(ChatDelta(content="It"))
                 + s.delta(ChatDelta(tool_call=ToolCallDelta(0, "call_1", "get")))
                 + s.delta(ChatDelta(tool_call=ToolCallDelta(0, arguments="{}"))) + s.finish("tool_calls", 6))  # fmt: skip
    types = [(e["type"], e.get("index")) for e in out]
    assert types == [("message_start", None), ("ping", None),
                     ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0),
                     ("content_block_stop", 0),
                     ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
                     ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
                     ("message_delta", None), ("message_stop", None)]  # fmt: skip
    assert out[3]["delta"] == {"type": "thinking_delta", "thinking": "hm"}
    assert out[10]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert out[-2]["delta"]["stop_reason"] == "tool_use" and out[-2]["usage"]["output_tokens"] == 6
    empty = events(A.MessageStream("msg_2", "m", 1).start() + A.MessageStream("msg_2", "m", 1).finish("stop", 0))
    assert [e["type"] for e in empty][-4:] == ["content_block_start", "content_block_stop", "message_delta", "message_stop"]
