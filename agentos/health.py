"""What ``GET /health`` says about this instance, and the checks behind it.

    status    HTTP  when
    running   200   every check passes
    degraded  200   a check fails: commits fail and are retried (or hang past
                    ``create_timeout``), the commit backlog is full (runs wait to emit), the
                    events of live runs fill 90 % of ``buffer_max_bytes_total`` (their older
                    events leave memory: followers read them from the database), the database
                    check fails, or a background task (lease renewer, reaper, buffer sweeper,
                    the task scheduler) is no longer alive
    down      503   commits have failed for ``commit_stall_timeout`` seconds, or stopped
    draining  503   shutting down: new runs are refused, running ones finish

The database check is one ``SELECT 1`` (:meth:`Store.ping`) bounded by
``health_check_timeout``. It runs at most once per ``health_check_interval``: requests in between
get the last answer, and requests that come while a check is under way wait for that same check
(one in flight), so load balancers polling hard cost the database one query per interval.

A report holds counts, flags and latencies only: no database URL, no error text (a driver's
message can quote values), no key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentos.errors import StoreUnavailable
from agentos.settings import MonitoringSettings

if TYPE_CHECKING:
    from agentos.runs import RunManager

__all__ = ["DatabaseCheck", "HealthChecks"]

logger = logging.getLogger("agentos.health")

#: Share of ``buffer_max_bytes_total`` held by live runs' events past which the buffer check fails.
_BUFFER_PRESSURE = 0.9


@dataclass(frozen=True)
class DatabaseCheck:
    """The last database round trip: whether it answered, how fast, and when (monotonic)."""

    ok: bool
    latency_ms: float
    checked_at: float
    #: ``timeout`` or ``unavailable`` when it failed; never the driver's text.
    error: str | None = None


class HealthChecks:
    """The health of one instance, from its run manager and a rate-limited database check.

    Example::

        checks = HealthChecks(manager, settings.monitoring)
        status, body = await checks.report()      # ("running", {"status": "running", ...})
    """

    def __init__(
        self,
        manager: RunManager,
        settings: MonitoringSettings,
        *,
        scheduler: Callable[[], bool | None] = lambda: None,
    ) -> None:
        self._manager = manager
        self._settings = settings
        #: Whether the task scheduler is alive; None when it is not meant to run.
        self._scheduler = scheduler
        self._last: DatabaseCheck | None = None
        self._probe: asyncio.Task[DatabaseCheck] | None = None

    async def database(self) -> DatabaseCheck:
        """The database check, at most ``health_check_interval`` seconds old."""
        last = self._last
        if last is not None and time.monotonic() - last.checked_at < (
            self._settings.health_check_interval
        ):
            return last
        if self._probe is None:
            self._probe = asyncio.create_task(self._ping(), name="agentos-health-ping")
        # Shielded: a caller that goes away does not cancel the check the others wait for.
        return await asyncio.shield(self._probe)

    async def _ping(self) -> DatabaseCheck:
        started = time.monotonic()
        error: str | None = None
        try:
            async with asyncio.timeout(self._settings.health_check_timeout):
                await self._manager.store.ping()
        except TimeoutError:
            error = "timeout"
        except StoreUnavailable:
            error = "unavailable"
        except Exception as exc:  # a driver error the store could not judge: still a failure
            logger.warning("the health check's database query failed: %s", type(exc).__name__)
            error = "unavailable"
        finally:
            self._probe = None
        now = time.monotonic()
        check = DatabaseCheck(error is None, round((now - started) * 1000, 3), now, error)
        self._last = check
        return check

    async def report(self) -> tuple[str, dict[str, Any]]:
        """The status (see the module docstring) and the JSON body of ``GET /health``."""
        manager = self._manager
        committer = manager.committer
        buffers = manager.buffers
        settings = manager.settings
        database = await self.database()
        failing = committer.failing_for()
        live_bytes = buffers.live_bytes
        tasks = manager.background_tasks()
        scheduler = self._scheduler()
        if scheduler is not None:
            tasks["scheduler"] = scheduler
        checks: dict[str, dict[str, Any]] = {
            "database": {
                "ok": database.ok,
                "latency_ms": database.latency_ms,
                "age_ms": round((time.monotonic() - database.checked_at) * 1000, 3),
                **({"error": database.error} if database.error else {}),
            },
            "committer": {
                "ok": failing == 0
                and committer.running
                and committer.pending < settings.commit.max_pending_events,
                "pending_events": committer.pending,
                "max_pending_events": settings.commit.max_pending_events,
                "failing_for": round(failing, 3),
            },
            "buffer": {
                "ok": live_bytes <= _BUFFER_PRESSURE * settings.buffer.max_bytes_total,
                "bytes": buffers.total_bytes,
                "live_bytes": live_bytes,
                "max_bytes": settings.buffer.max_bytes_total,
                "runs": len(buffers),
            },
            "background": {"ok": all(tasks.values()), "tasks": tasks},
        }
        if not manager.accepting:
            status = "draining"
        elif manager.stalled:
            status = "down"
        elif all(check["ok"] for check in checks.values()):
            status = "running"
        else:
            status = "degraded"
        body = {
            "status": status,
            "instance_id": settings.instance_id,
            "active_runs": manager.active_runs,
            "open_streams": manager.open_streams,
            "buffered_runs": len(buffers),
            "buffered_bytes": buffers.total_bytes,
            "commits": committer.commits,
            "events_written": committer.events_written,
            "pending_events": committer.pending,
            "commits_failing_for": round(failing, 3),
            "checks": checks,
        }
        return status, body

    async def ready(self) -> str | None:
        """Why this instance should get no traffic now (``draining``, ``down``, ``database``),
        or None when it is ready."""
        manager = self._manager
        if not manager.accepting:
            return "draining"
        if manager.stalled:
            return "down"
        if not (await self.database()).ok:
            return "database"
        return None
