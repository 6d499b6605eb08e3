"""Tasks in-process: a cron task in a time zone, and a run of it now (see README, "Schedules")."""

import asyncio

from agentos import Agent, AgentOS, EchoModel

reporter = Agent(id="reporter", model=EchoModel(delay=0.01))


async def main(db_url: str = "sqlite+aiosqlite:///tasks.db") -> list[str]:
    async with AgentOS(agents=[reporter], db_url=db_url) as agent_os:
        task = await agent_os.tasks.create(
            {
                "component_id": "reporter",
                "message": "the morning report",
                "schedule": {"kind": "cron", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
                "overlap_policy": "skip_if_running",
            }
        )
        print("next:", task.to_dict()["next_fire_at"])  # 09:00 Berlin time, in UTC
        run = await agent_os.tasks.trigger(task.task_id, wait=30)  # one run now
        print(run.status.value, run.occurrence)  # COMPLETED manual:2030-...Z
        runs = await agent_os.tasks.runs(task.task_id)  # newest first
        await agent_os.tasks.pause(task.task_id)
        await agent_os.tasks.delete(task.task_id)  # its runs stay
    return [r.run_id for r in runs]


if __name__ == "__main__":
    asyncio.run(main())
