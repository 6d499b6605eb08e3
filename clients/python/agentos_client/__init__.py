"""A client for agentos that makes a dropped connection invisible.

::

    from agentos_client import AsyncClient

    async with AsyncClient("http://127.0.0.1:7777", security_key="...") as client:
        async for event in client.arun("agents", "echo", "hi", stream=True, background=True):
            print(event.event_index, event.event, event.content)

``WorkflowSocket`` does the same for workflow runs over the ``/workflows/ws`` WebSocket.

A background stream reconnects after a drop and resumes from the last index it yielded, so
every event arrives exactly once. See ``AsyncClient`` for the settings and ``_errors`` for the
error hierarchy.
"""

from __future__ import annotations

from ._auth import TokenProvider
from ._client import AsyncClient, Client, SyncRunStream
from ._errors import (
    APIStatusError,
    ClientClosed,
    ClientError,
    RunFailed,
    StreamError,
    TransportError,
    WaitTimeout,
)
from ._models import Event, Kind, MetaEvent, Run, RunEvent, RunStatus
from ._stream import RunStream
from ._ws import WorkflowRun, WorkflowSocket, WorkflowSocketError

__all__ = [
    "APIStatusError",
    "AsyncClient",
    "Client",
    "ClientClosed",
    "ClientError",
    "Event",
    "Kind",
    "MetaEvent",
    "Run",
    "RunEvent",
    "RunFailed",
    "RunStatus",
    "RunStream",
    "StreamError",
    "SyncRunStream",
    "TokenProvider",
    "TransportError",
    "WaitTimeout",
    "WorkflowRun",
    "WorkflowSocket",
    "WorkflowSocketError",
]
