from __future__ import annotations

from agentos_client._sse import SSEDecoder, SSEFrame


def decode(text: str) -> list[SSEFrame]:
    decoder = SSEDecoder()
    frames = [decoder.feed(line) for line in text.splitlines()]
    return [f for f in frames if f is not None]


def test_numbered_frame() -> None:
    frames = decode('id: 3\nevent: RunContent\ndata: {"a":1}\n\n')
    assert frames == [SSEFrame(event="RunContent", data='{"a":1}', id="3")]


def test_meta_frame_has_no_id_even_after_a_numbered_one() -> None:
    frames = decode("id: 0\nevent: A\ndata: x\n\nevent: catch_up\ndata: y\n\n")
    assert [f.id for f in frames] == ["0", None]


def test_comments_and_pings_are_not_frames() -> None:
    assert decode(": ping\n\n: ping - 2025\n\n") == []


def test_multi_line_data_and_optional_space() -> None:
    frames = decode("data:one\ndata:  two\n\n")
    assert frames[0].data == "one\n two"
    assert frames[0].event == "message"


def test_retry_and_unknown_fields() -> None:
    frames = decode("retry: 1500\nfoo: bar\ndata: x\n\nretry: soon\ndata: y\n\n")
    assert [f.retry for f in frames] == [1500, None]


def test_id_with_nul_is_ignored() -> None:
    assert decode("id: 1\x002\ndata: x\n\n")[0].id is None


def test_incomplete_frame_is_not_dispatched() -> None:
    assert decode("id: 1\nevent: A\ndata: x") == []
