"""Sync tools run in a bounded pool: hung calls cannot starve the server's other tools."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agentos.tools import ToolFailed, ToolThreads, tool


async def test_hung_sync_tools_fill_the_pool_then_calls_fail_at_once() -> None:
    release = threading.Event()

    @tool
    def hang() -> str:
        """Wait until released."""
        release.wait(10)
        return "done"

    @tool
    def quick() -> str:
        """Answer at once."""
        return "quick"

    @tool
    async def also_quick() -> str:
        """An async tool."""
        return "async"

    threads = ToolThreads(2)
    try:
        for _ in range(2):
            with pytest.raises(ToolFailed, match="timed out"):
                await hang.execute("{}", timeout=0.2, result_bytes=100, threads=threads)
        assert threads.busy == 2  # the timed-out calls still hold their threads
        with pytest.raises(ToolFailed, match="busy"):
            await quick.execute("{}", timeout=5, result_bytes=100, threads=threads)
        assert await also_quick.execute("{}", timeout=5, result_bytes=100, threads=threads) == (
            "async"
        )
        release.set()
        for _ in range(100):
            if threads.busy == 0:
                break
            await asyncio.sleep(0.02)
        assert threads.busy == 0
        assert await quick.execute("{}", timeout=5, result_bytes=100, threads=threads) == "quick"
    finally:
        release.set()
        threads.shutdown()
