"""The servers the benchmark measures, side by side on the same stack (uvicorn + Starlette).

- ``/agents/bench/runs`` etc.: agentos with an EchoModel agent at zero delay, SQLite store.
- ``/bare``: the ceiling, a bare sse-starlette endpoint that emits the same frames (same event
  names, ids and JSON payloads) with no run manager, buffer or store.

Run: ``python -m bench.server PORT DB_URL``.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.routing import Route

from agentos import Agent, AgentOS, EchoModel, Settings
from agentos.events import dumps


def message(n_words: int) -> str:
    return " ".join(f"w{i}" for i in range(n_words))


async def bare(request: Request) -> EventSourceResponse:
    """The same frames as an agentos run of ``n`` words, made on the fly."""
    n = int(request.query_params["n"])
    run_id, session_id = str(uuid.uuid4()), str(uuid.uuid4())

    def frame(index: int, name: str, **fields: object) -> ServerSentEvent:
        payload = {
            "event": name,
            "event_index": index,
            "run_id": run_id,
            "session_id": session_id,
            "agent_id": "bench",
            "created_at": round(time.time(), 3),
            **fields,
        }
        return ServerSentEvent(dumps(payload), event=name, id=str(index), sep="\n")

    async def frames() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="ping", sep="\n")
        text = message(n)
        yield frame(0, "RunStarted", input=text)
        words = text.split(" ")
        for i, word in enumerate(words):
            yield frame(i + 1, "RunContent", content=word if i == 0 else " " + word)
        yield frame(n + 1, "RunCompleted", content=text)

    return EventSourceResponse(frames(), sep="\n", ping=15)


def build(db_url: str) -> AgentOS:
    settings = Settings.from_env(db_url=db_url, instance_id="bench")
    agent_os = AgentOS(agents=[Agent(id="bench", model=EchoModel(0))], settings=settings)
    agent_os.app.router.routes.insert(0, Route("/bare", bare))
    return agent_os


if __name__ == "__main__":
    port, db_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(build(db_url).app, host="127.0.0.1", port=port, log_level="warning")
