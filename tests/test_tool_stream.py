"""Forced tool calls as stream deltas (app/worker/tool_stream.py): however the text is cut
into deltas, the entries rebuild the calls exactly, each announced once with its name."""

from __future__ import annotations

import json
import random

from app.worker.tool_stream import ToolCallStream

ANSWER = (
    '<tool_call> {"name": "add", "arguments": {"a": 2, "b": {"x": "}\\\\\\"]"}} }</tool_call>\n'
    '<tool_call>{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}'
    "</tool_call>"
)


def test_any_cut_of_the_answer_rebuilds_the_calls() -> None:
    rng = random.Random(14)
    for _ in range(300):
        stream, entries, i = ToolCallStream(), [], 0
        while i < len(ANSWER):
            step = rng.randint(1, 6)
            entries += stream.feed(ANSWER[i : i + step])
            i += step
        calls: dict[int, dict[str, str]] = {}
        for entry in entries:
            if "id" in entry:
                assert entry["index"] not in calls and entry["id"].startswith("call_")
                assert entry["type"] == "function" and entry["function"]["arguments"] == ""
                calls[entry["index"]] = {"name": entry["function"]["name"], "arguments": ""}
            else:
                assert set(entry["function"]) == {"arguments"}
                calls[entry["index"]]["arguments"] += entry["function"]["arguments"]
        assert [c["name"] for c in calls.values()] == ["add", "get_weather"]
        assert json.loads(calls[0]["arguments"]) == {"a": 2, "b": {"x": '}\\"]'}}
        assert json.loads(calls[1]["arguments"]) == {"city": "Paris", "unit": "celsius"}
        assert stream.calls == 2


def test_arguments_are_sent_as_they_come() -> None:
    stream = ToolCallStream()
    assert stream.feed('<tool_call>{"name": "add", "argu') == []
    start, first = stream.feed('ments": {"a"')
    assert start["function"] == {"name": "add", "arguments": ""}
    # The arguments' first characters are out at once; trailing spaces wait.
    assert first == {"index": 0, "function": {"arguments": '{"a"'}}
    assert stream.feed(": 1, ") == [{"index": 0, "function": {"arguments": ": 1,"}}]
    assert stream.feed('"b": 2}') == [{"index": 0, "function": {"arguments": ' "b": 2}'}}]
    assert stream.feed("}</tool_call>") == []
