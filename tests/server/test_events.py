"""Events: the JSON text (orjson or json, same bytes) and the cached SSE frame."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import json
import math
import random
from typing import Any

import pytest
from sse_starlette import ServerSentEvent

from agentos import Event, events
from agentos.events import dumps
from agentos.http.sse import sse_frame
from tests.storage import run_record


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def reference(obj: Any) -> str:
    """json.dumps, with lone surrogates as JSON escapes (UTF-8 cannot carry them raw)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
    return "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in text)


PAYLOADS: list[Any] = [
    {"event": "RunContent", "event_index": 3, "created_at": 1763700000.123, "content": " Hel"},
    {"content": 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f'},
    {"content": "é ü 中文 😀 \u2028 \u2029 \ufeff"},
    {"a": True, "b": False, "c": None, "d": -0.0, "e": 0.0, "f": 1e-4, "g": 9999999999999998.0},
    {"tiny": 1e-5, "huge": 1e16, "max": 1.7976931348623157e308, "min": 5e-324},
    {"nan": math.nan, "inf": math.inf, "ninf": -math.inf},
    {"big": 2**64, "neg": -(2**63) - 1, "ok": 2**63 - 1},
    {"enum": Color.RED, "int_enum": Level.HIGH, "when": datetime.datetime(2026, 1, 2, 3, 4, 5)},
    {"nested": {"list": [1, 2.5, "x", None], "tool_args": {"q": "é"}}},
    {1: "int key", "s": "x"},
    {"surrogate": "\ud800"},
    ["not", "a", "dict"],
    "just a string",
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("fast", [True, False])
def test_dumps_is_json_dumps(payload: Any, fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not fast:
        monkeypatch.setattr(events, "_orjson", None)
    assert dumps(payload) == reference(payload)


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if isinstance(p, dict)])
@pytest.mark.parametrize("fast", [True, False])
def test_make_event_text_is_json_dumps(
    payload: dict[Any, Any], fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fast:
        monkeypatch.setattr(events, "_orjson", None)
    record = run_record("r\u00e9", session_id="s", attempt=2)
    event = events.make_event(record, 4, "RunContent", payload, False)
    common = {
        "event": "RunContent",
        "event_index": 4,
        "run_id": "r\u00e9",
        "session_id": "s",
        "agent_id": "echo",
        "attempt": 2,
    }
    created_at = json.loads(event.data)["created_at"]
    expected = {**common, "created_at": created_at}
    for key, value in payload.items():
        expected.setdefault(key, value)
    assert event.data == reference(expected)
    assert (event.index, event.name, event.terminal) == (4, "RunContent", False)


def test_a_made_event_is_the_dataclass_event() -> None:
    assert [f.name for f in dataclasses.fields(Event)] == [
        "index",
        "name",
        "data",
        "terminal",
        "sse",
    ]
    made = events._new_event(7, "RunContent", '{"a":1}', True)
    built = Event(7, "RunContent", '{"a":1}', True)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert made.sse is None and type(made) is Event
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.index = 8  # type: ignore[misc]


def test_created_at_is_the_time_rounded_to_the_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(15)
    times = [0.0, -1.5, 1.0, 1000.0005, 1763700000.0, 1763700000.0005, 8.8e9, 1e13]
    times += [1763700000 + rng.uniform(0, 1e6) for _ in range(20_000)]
    # Within a few microseconds of a half millisecond, where the product can fall either side.
    times += [
        (rng.randrange(10**12, 8 * 10**12) + 0.5) / 1000 + rng.uniform(-3e-6, 3e-6)
        for _ in range(20_000)
    ]
    times += [(1763700000123 + 0.5) / 1000 + k * 1e-7 for k in range(-40, 40)]
    for now in times:
        monkeypatch.setattr(events.time, "time", functools.partial(float, now))
        first, again = events._created_at(), events._created_at()
        assert first == again == round(now, 3), now


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\ud83d", "\U0001f600\ud800\x00"])
def test_lone_surrogates_are_escaped_and_round_trip(text: str) -> None:
    data = dumps({"content": text, text: 1})
    data.encode("utf-8")  # valid UTF-8: a database and a socket can carry it
    assert json.loads(data) == {"content": text, text: 1}


def test_sse_frame_is_encoded_once_and_shared() -> None:
    event = Event(7, "RunContent", '{"event":"RunContent","event_index":7}')
    frame = sse_frame(event)
    expected = ServerSentEvent(event.data, event="RunContent", id="7", sep="\n").encode()
    assert frame == expected
    assert sse_frame(event) is frame
    assert event == Event(7, "RunContent", event.data)  # the cache is not part of its value


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("RunContent", '{"event":"RunContent","content":" w1"}'),
        ("RunStarted", '{"content":"é ✓ \U0001f600 \\n"}'),
        ("my.custom-event", "{}"),
        ("two\nlines", '{"a":1}'),  # sse-starlette drops the line break of a name
        ("RunContent", '{"a":\n1}'),  # text with line breaks: one data line each
        ("RunContent", '{"a":\r\n1,\r"b":2}'),
        ("Name\x00", '{"a":1}'),  # a name no store would take: encoded whole all the same
        ("RunContent", ""),
    ],
)
@pytest.mark.parametrize("index", [0, 7, 123456789])
def test_sse_frame_is_sse_starlettes_encoding(name: str, data: str, index: int) -> None:
    event = Event(index, name, data)
    expected = ServerSentEvent(data, event=name, id=str(index), sep="\n").encode()
    assert sse_frame(event) == expected
    assert sse_frame(Event(index, name, data), 0) == expected  # not cached


def test_big_events_are_not_cached() -> None:
    event = Event(8, "RunContent", '{"content":"' + "x" * 600 + '"}')
    assert sse_frame(event, 512) == sse_frame(event, 512)
    assert event.sse is None
