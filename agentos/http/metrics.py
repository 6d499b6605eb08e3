"""``GET /metrics``: the server's counters and gauges in the Prometheus text format.

Nothing here runs per event. The core keeps plain counters where it already counts (the
committer's ``commits``, ``events_written``, ``commit_failures``; the run manager's runs started
and ended, and its components' meters of model tokens and tool calls, ``context.Meter``; the
leases' reaps; the scheduler's occurrences by outcome), and this module reads them, with the
gauges (buffer bytes, open streams, active runs ...), when a scrape comes (:class:`_Collector`).
The commit histograms are fed once per committed transaction through the committer's
``observer`` hook, the firing lag once per fired occurrence through the scheduler's.

Each :class:`Metrics` has its own ``CollectorRegistry`` (not prometheus_client's global one), so
several servers in one process each report their own numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from agentos.errors import StoreUnavailable
from agentos.runs import RunManager
from agentos.tasks import TaskManager

__all__ = ["Metrics"]

#: Seconds one group commit takes (its transaction), from a fast local disk to a slow network.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Events per group commit (at most ``max_batch_events``, 2000 by default).
_GROUP_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
#: Seconds from an occurrence's time to its run's commit: on time is well under a second; a
#: late one waited for a busy database, a full run queue or a restart (``task_misfire_grace``).
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The classic text format, which every Prometheus reads (our names are plain ASCII).
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The metrics of one server; ``endpoint`` is the ``GET /metrics`` route.

    ``websocket_followers`` tells how many runs are followed over WebSockets right now (the
    rest of the open streams are SSE responses).
    """

    def __init__(
        self,
        manager: RunManager,
        websocket_followers: Callable[[], int],
        tasks: TaskManager | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.commit_seconds = Histogram(
            "agentos_commit_duration_seconds",
            "Seconds each committed group transaction took.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.group_events = Histogram(
            "agentos_commit_group_events",
            "Events written by each committed group transaction.",
            buckets=_GROUP_BUCKETS,
            registry=self.registry,
        )
        manager.committer.observer = self._observe_commit
        self.firing_lag = Histogram(
            "agentos_task_firing_lag_seconds",
            "Seconds from each occurrence this instance fired to its run's commit.",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        if tasks is not None:
            tasks.observer = self.firing_lag.observe
        self._collector = _Collector(manager, websocket_followers, tasks)
        self.registry.register(self._collector)

    def _observe_commit(self, seconds: float, events: int) -> None:
        self.commit_seconds.observe(seconds)
        self.group_events.observe(events)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        await self._collector.read_queue_depth()
        return Response(self.render(), media_type=_CONTENT_TYPE)


class _Collector(Collector):
    """Reads the core's counters and gauges at scrape time."""

    def __init__(
        self,
        manager: RunManager,
        websocket_followers: Callable[[], int],
        tasks: TaskManager | None,
    ) -> None:
        self._manager = manager
        self._websocket_followers = websocket_followers
        self._tasks = tasks
        #: Runs waiting in the queue (all instances), read from the database before a scrape;
        #: None when it could not be read (the gauge is then left out).
        self._queue_depth: int | None = None

    async def read_queue_depth(self) -> None:
        """Count the queued runs (one indexed query, at most ``db_timeout`` seconds)."""
        manager = self._manager
        try:
            async with asyncio.timeout(manager.settings.database.timeout):
                self._queue_depth = await manager.store.queue_depth()
        except (TimeoutError, StoreUnavailable):
            self._queue_depth = None

    def collect(self) -> Iterator[Metric]:
        manager = self._manager
        committer = manager.committer
        started = CounterMetricFamily(
            "agentos_runs_started",
            "Runs started by this instance.",
            labels=["kind", "component"],
        )
        for (kind, component), count in sorted(manager.runs_started.items()):
            started.add_metric([kind, component], count)
        yield started
        ended = CounterMetricFamily(
            "agentos_runs_ended",
            "Runs of this instance that ended, by final status.",
            labels=["kind", "component", "status"],
        )
        for (kind, component, status), count in sorted(manager.runs_ended.items()):
            ended.add_metric([kind, component, status], count)
        yield ended
        tokens = CounterMetricFamily(
            "agentos_model_tokens",
            "Tokens the model calls of this instance's runs reported, by type (prompt, completion).",
            labels=["kind", "component", "type"],
        )
        tool_calls = CounterMetricFamily(
            "agentos_tool_calls",
            "Tool calls of this instance's runs, by outcome (completed, error, timeout).",
            labels=["kind", "component", "outcome"],
        )
        for (kind, component), meter in sorted(manager.meters.items()):
            tokens.add_metric([kind, component, "prompt"], meter.prompt_tokens)
            tokens.add_metric([kind, component, "completion"], meter.completion_tokens)
            for outcome, count in meter.tool_calls.items():
                tool_calls.add_metric([kind, component, outcome], count)
        yield tokens
        yield tool_calls
        yield CounterMetricFamily(
            "agentos_events_committed",
            "Events written to the database.",
            value=committer.events_written,
        )
        yield CounterMetricFamily(
            "agentos_commits", "Group transactions committed.", value=committer.commits
        )
        yield CounterMetricFamily(
            "agentos_commit_failures",
            "Group transactions that failed (each retry counts).",
            value=committer.commit_failures,
        )
        yield CounterMetricFamily(
            "agentos_runs_queued",
            "Runs created QUEUED by this instance (it had no room).",
            value=manager.runs_queued,
        )
        yield CounterMetricFamily(
            "agentos_runs_claimed",
            "Queued runs this instance claimed (each claim starts an attempt).",
            value=manager.runs_claimed,
        )
        retries = CounterMetricFamily(
            "agentos_run_retries",
            "Attempts that ended here and put their run back in the queue, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(manager.runs_retried.items()):
            retries.add_metric([reason], count)
        yield retries
        if self._queue_depth is not None:
            yield GaugeMetricFamily(
                "agentos_queue_depth",
                "Runs waiting in the queue, on every instance of the database.",
                value=self._queue_depth,
            )
        yield CounterMetricFamily(
            "agentos_lease_reaps",
            "Runs of lost instances (expired leases) this instance ended.",
            value=manager.leases.reaps,
        )
        if self._tasks is not None:
            occurrences = CounterMetricFamily(
                "agentos_task_occurrences",
                "Occurrences of tasks this instance's scheduler handled, by outcome (fired, "
                "skipped by the overlap policy or a paused component, missed: too late, "
                "dropped by catchup).",
                labels=["outcome"],
            )
            for outcome, count in self._tasks.occurrences.items():
                occurrences.add_metric([outcome], count)
            yield occurrences
        yield GaugeMetricFamily(
            "agentos_active_runs", "Runs executing in this instance.", value=manager.active_runs
        )
        yield GaugeMetricFamily(
            "agentos_pending_events",
            "Events waiting for their group commit.",
            value=committer.pending,
        )
        yield GaugeMetricFamily(
            "agentos_buffer_bytes",
            "Payload bytes of committed events held in memory.",
            value=manager.buffers.total_bytes,
        )
        yield GaugeMetricFamily(
            "agentos_buffered_runs",
            "Runs whose events are held in memory.",
            value=len(manager.buffers),
        )
        websocket = self._websocket_followers()
        streams = GaugeMetricFamily(
            "agentos_open_streams",
            "Runs being followed right now, by transport (SSE responses, WebSocket followers).",
            labels=["transport"],
        )
        streams.add_metric(["sse"], max(0, manager.open_streams - websocket))
        streams.add_metric(["websocket"], websocket)
        yield streams
        yield GaugeMetricFamily(
            "agentos_commits_failing_seconds",
            "Seconds group commits have been failing without a success (0 while they succeed).",
            value=committer.failing_for(),
        )
