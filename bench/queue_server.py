"""The server ``python -m bench.queue`` measures: agentos with one zero-delay echo agent.

Settings come from ``AGENTOS_*`` variables. Run by path with ``python -P`` and the agentos under
test first on ``PYTHONPATH`` (this tree, or an export of an older commit for the baseline), so
it imports nothing of this tree but agentos::

    PYTHONPATH=/path/to/tree python -P bench/queue_server.py --port 8000
"""

from __future__ import annotations

import argparse
import resource

import uvicorn

from agentos import Agent, AgentOS, EchoModel, Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    agent_os = AgentOS(agents=[Agent(id="echo", model=EchoModel(0))], settings=Settings.from_env())
    uvicorn.run(
        agent_os.app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        backlog=4096,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
