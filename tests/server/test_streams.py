"""RunStream: events in chunks, as a server sends them."""

from __future__ import annotations

from pathlib import Path

from agentos import Agent, AgentOS, EchoModel, Event, Settings
from tests.apps import words


async def test_chunks_flatten_to_the_events(tmp_path: Path) -> None:
    agent = Agent(id="echo", model=EchoModel(0))
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path}/a.db", instance_id="t")
    async with AgentOS(agents=[agent], settings=settings) as agent_os:
        run = await agent.arun(words(300))
        stream = await agent_os.manager.open_stream(run.run_id, 10)
        assert stream is not None
        chunks = [chunk async for chunk in stream.chunks()]
        items = [item for chunk in chunks for item in chunk]
        assert items[0].name == "replay"
        indices = [item.index for item in items[1:] if isinstance(item, Event)]
        assert indices == list(range(11, 302)) and items[-1].name == "RunCompleted"
        assert len(chunks) < len(items)  # ready events come together
