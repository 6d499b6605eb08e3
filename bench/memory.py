"""Memory per buffered event, measured in-process with tracemalloc (scenario 5)."""

from __future__ import annotations

import sys
import tracemalloc
from dataclasses import dataclass

from agentos import Event, Settings
from agentos.buffer import EventBuffer
from agentos.events import dumps


@dataclass
class BufferedEventCost:
    payload: float  # len() of the JSON text, in bytes (what the event carries)
    total: float  # everything the buffer holds per event, once every event has been sent
    overhead: float  # total - payload


def _payloads(n: int, content: str) -> list[str]:
    return [
        dumps(
            {
                "event": "RunContent",
                "event_index": i,
                "run_id": "6f1c2b7e-8d1a-4c5e-9f3b-2a7d9e4b1c0a",
                "session_id": "0b9e8d7c-6a5f-4e3d-2c1b-0a9f8e7d6c5b",
                "agent_id": "bench",
                "created_at": 1763700000.123,
                "content": content.format(i),
            }
        )
        for i in range(n)
    ]


def buffered_event_cost(n: int = 20_000, content: str = " word{}") -> BufferedEventCost:
    """What one buffered event costs: its JSON text object, the Event, its list slot, and what
    streaming it leaves behind (``sse_frame`` caches the encoded frame of small events).

    The JSON texts are made before tracing starts and measured with ``sys.getsizeof``, so the
    total counts each object once.
    """
    settings = Settings(
        buffer_max_events_per_run=n,
        buffer_max_bytes_per_run=1 << 40,
        buffer_max_bytes_total=1 << 40,
    )
    payloads = _payloads(n, content)
    text_objects = sum(sys.getsizeof(p) for p in payloads)
    text_bytes = sum(len(p.encode()) for p in payloads)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    buffers = EventBuffer(settings.buffer)
    buffers.open("run")
    events = [Event(i, "RunContent", payloads[i]) for i in range(n)]
    buffers.publish("run", events)
    for event in events:
        _send(event)
    del events
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    total = (after - before + text_objects) / n
    return BufferedEventCost(text_bytes / n, total, total - text_bytes / n)


def _send(event: Event) -> None:
    """Do to an event what streaming it does (encode its frame, if the server caches it)."""
    from agentos.http.sse import sse_frame

    sse_frame(event, Settings().streams.sse_cache_max_bytes)
