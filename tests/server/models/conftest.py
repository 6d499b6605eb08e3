"""The fake OpenAI-compatible server every model test talks to (real HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_openai import FakeOpenAI
from tests.servers import ThreadServer


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    thread = ThreadServer(server.app)
    thread.start()
    server.base_url = thread.url + "/v1"  # type: ignore[attr-defined]
    yield server
    thread.stop()
