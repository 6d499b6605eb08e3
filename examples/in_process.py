"""Run an agent in-process in the background, then follow its events (see README)."""

import asyncio

from agentos import Agent, AgentOS, EchoModel

agent = Agent(id="echo", model=EchoModel(delay=0.01))


async def main(db_url: str = "sqlite+aiosqlite:///runs.db") -> list[str]:
    names = []
    async with AgentOS(agents=[agent], db_url=db_url):
        run = await agent.arun("hello big world", background=True)  # PENDING, at once
        async for event in await agent.aresume(run.run_id, last_event_index=-1):
            print(event.index, event.name, event.payload().get("content"))
            names.append(event.name)
        print((await agent.aget_run(run.run_id)).status.value)  # COMPLETED
    return names


if __name__ == "__main__":
    asyncio.run(main())
