from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from agentos_client._sse import SSEFrame, SSELineDecoder, aiter_frames

# Characters str.splitlines() (and so httpx's aiter_lines) treats as line ends; JSON leaves the
# last three unescaped inside strings. SSE lines end only at CR, LF or CRLF.
NOT_LINE_ENDS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def decode(text: str, chunk: int = 0) -> list[SSEFrame]:
    """The frames of ``text`` sent as UTF-8 in chunks of ``chunk`` bytes (0: all at once)."""
    body = text.encode()
    size = chunk or max(1, len(body))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]

    async def main() -> list[SSEFrame]:
        return [frame async for frame in aiter_frames(chunks())]

    return asyncio.run(main())


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


@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 7])
def test_only_cr_lf_and_crlf_end_lines(chunk: int) -> None:
    data = f'{{"content": "a{NOT_LINE_ENDS}b"}}'
    text = f"id: 0\revent: A\r\ndata: {data}\n\r\nid: 1\rdata: x\r\r"
    frames = decode(text, chunk)
    assert frames == [SSEFrame(event="A", data=data, id="0"), SSEFrame("message", "x", "1")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    lines = SSELineDecoder()
    assert lines.decode(b"data: a\r") == ["data: a"]
    assert lines.decode(b"\n") == []
    assert lines.decode(b"\r") == [""]
    assert lines.decode(b"\nnext") == []
    assert lines.decode(b"\n") == ["next"]


def test_utf8_split_between_chunks_bad_bytes_and_a_leading_bom() -> None:
    lines = SSELineDecoder()
    encoded = "\ufeffdata: \u2028\n".encode()
    assert [lines.decode(encoded[i : i + 1]) for i in range(len(encoded))][-1] == ["data: \u2028"]
    assert lines.decode(b"data: \xff\n") == ["data: \ufffd"]
