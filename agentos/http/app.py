"""The HTTP face of agentos: :class:`AgentOS` builds the Starlette app of PROTOCOL.md.

Routes parse the request, call the run manager and shape the response; the manager never sees
Starlette. Domain errors become ``{"detail", "code"}`` JSON responses in one place
(``_error_response``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from agentos.backends.base import Store
from agentos.components.base import Component
from agentos.errors import (
    AgentOSError,
    ComponentNotFound,
    DatabaseUnsupported,
    InstanceIdInUse,
    InvalidRequest,
    RequestTimeout,
    RunNotFound,
    SchemaOutdated,
    SchemaUnknown,
    ShuttingDown,
)
from agentos.events import KINDS, dumps
from agentos.health import HealthChecks
from agentos.http import forms, openapi
from agentos.http.auth import Authenticator, Principal, authorize, redact_tokens_in_logs
from agentos.http.metrics import Metrics
from agentos.http.middleware import InstanceHeader, SecurityGuard, error_body, error_json
from agentos.http.sse import OpenStreams, event_stream
from agentos.http.tasks import TaskRoutes
from agentos.http.ws import WorkflowSockets
from agentos.idempotency import Idempotency, request_hash
from agentos.records import IdempotencyKey, RunRecord, check_id
from agentos.runs import RunManager
from agentos.settings import Settings
from agentos.streams import RunStream
from agentos.tasks import TaskManager

__all__ = ["AgentOS"]

logger = logging.getLogger("agentos.app")

# Runs a session page may skip (``offset`` of GET /sessions/{session_id}).
_MAX_SESSION_RUNS = 1_000_000
_STATIC = Path(__file__).parent / "static"
# The demo page and the browser client: public files, served without the security key.
_PUBLIC_FILES = {"/": "index.html", "/static/agentos.js": "agentos.js"}
# For load balancers, orchestrators and API tools: public, and they tell nothing secret.
_PUBLIC_ROUTES = ("/health", "/health/live", "/health/ready", "/openapi.json")
#: Most runs one ``GET .../runs`` lists, and the furthest ``offset`` it starts at.
#: Largest ``wait_timeout_seconds`` accepted (then capped by ``max_wait_seconds``): a week.
_MAX_WAIT = 7 * 24 * 3600.0


class AgentOS:
    """An agentos server: your agents, teams and workflows behind the HTTP API.

    Example::

        agent_os = AgentOS(agents=[Agent(id="echo", model=EchoModel())])
        app = agent_os.app            # serve with `agentos serve module:app` or uvicorn

    Used as an async context manager it starts the run manager without HTTP, for in-process use::

        async with AgentOS(agents=[agent]) as agent_os:
            run = await agent.arun("hello", background=True)
    """

    def __init__(
        self,
        agents: Sequence[Component] = (),
        teams: Sequence[Component] = (),
        workflows: Sequence[Component] = (),
        *,
        db_url: str | None = None,
        settings: Settings | None = None,
        store: Store | None = None,
    ) -> None:
        settings = settings if settings is not None else Settings.from_env()
        if db_url is not None:
            settings = settings.replace(db_url=db_url)
        self.settings = settings
        self.manager = RunManager(settings, store)
        for kind, components in (("agents", agents), ("teams", teams), ("workflows", workflows)):
            for component in components:
                if component.kind.name != kind:
                    raise TypeError(f"{component!r} is not one of the {kind}")
                self.manager.register(component)
                component.runtime.attach(self.manager)
        #: The tasks and this instance's scheduler (``agentos/tasks.py``).
        self.tasks = TaskManager(self.manager, settings.tasks)
        self._exit = anyio.Event()
        #: The open SSE responses, ended after the grace period on shutdown.
        self._streams = OpenStreams()
        self.authenticator = Authenticator(settings.auth)
        #: The Idempotency-Keys of creates, kept in the run store.
        self.idempotency = Idempotency(
            self.manager.store,
            ttl=settings.retention.idempotency_ttl,
            create_timeout=settings.commit.create_timeout,
        )
        self.app = self._build_app()

    def get_app(self) -> Starlette:
        return self.app

    async def __aenter__(self) -> AgentOS:
        await self.manager.start()
        self.tasks.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.tasks.aclose()
        await self.manager.aclose()
        await self._close_components()

    async def _close_components(self) -> None:
        """Close the components' model connections once no run uses them."""
        for component in self.manager.components.values():
            await component.aclose()

    # -- app -----------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        sockets = WorkflowSockets(self.manager, self.settings, self.authenticator)
        self.metrics = Metrics(self.manager, lambda: sockets.followers, self.tasks)
        self.health_checks = HealthChecks(
            self.manager, self.settings.monitoring, scheduler=self.tasks.scheduler_alive
        )
        routes = [
            *(Route(path, _static_file, methods=["GET"]) for path in _PUBLIC_FILES),
            Route("/health", self.health, methods=["GET"]),
            Route("/health/live", self.health_live, methods=["GET"]),
            Route("/health/ready", self.health_ready, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/metrics", self.scrape, methods=["GET"]),
            Route("/config", self.config, methods=["GET"]),
            WebSocketRoute("/workflows/ws", sockets),
            *TaskRoutes(self.tasks, self.settings).routes(),
            Route("/sessions", self.list_sessions, methods=["GET"]),
            Route("/sessions/{session_id}", self.get_session, methods=["GET"]),
            Route("/sessions/{session_id}", self.delete_session, methods=["DELETE"]),
            Route("/{kind}", self.list_components, methods=["GET"]),
            Route("/{kind}/{id}/runs", self.create_run, methods=["POST"]),
            Route("/{kind}/{id}/runs", self.list_runs, methods=["GET"]),
            Route("/{kind}/{id}/runs/{run_id}", self.get_run, methods=["GET"]),
            Route("/{kind}/{id}/runs/{run_id}/attempts", self.list_attempts, methods=["GET"]),
            Route("/{kind}/{id}/runs/{run_id}/resume", self.resume, methods=["GET", "POST"]),
            Route("/{kind}/{id}/runs/{run_id}/cancel", self.cancel, methods=["POST"]),
            Route("/{kind}/{id}", self.get_component, methods=["GET"]),
            Route("/{kind}/{id}/pause", self.pause_component, methods=["POST"]),
            Route("/{kind}/{id}/resume", self.resume_component, methods=["POST"]),
        ]
        retry_after = {"Retry-After": str(self.settings.http.retry_after)}

        async def _error_response(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, AgentOSError)
            if isinstance(exc, ComponentNotFound | ShuttingDown):
                logger.debug("%s %s: %s", request.method, request.url.path, exc.detail)
            if isinstance(exc, RequestTimeout):  # the rest of the body may still come: stop here
                return error_json(exc, {"Connection": "close"})
            return error_json(exc, retry_after if exc.status in (429, 503) else None)

        app = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={
                AgentOSError: _error_response,
                HTTPException: _http_error_response,
                Exception: _internal_error_response,
            },
        )
        # Starlette would answer "/agents/" with a redirect to an absolute URL built from the
        # request's Host header: a client-chosen host in Location. Paths have one spelling.
        app.router.redirect_slashes = False
        public = [
            *_PUBLIC_FILES,
            *_PUBLIC_ROUTES,
            *(["/metrics"] if self.settings.monitoring.metrics_public else []),
        ]
        app.add_middleware(SecurityGuard, authenticator=self.authenticator, public_paths=public)
        app.add_middleware(InstanceHeader, instance_id=self.settings.instance_id)
        app.state.agent_os = self
        redact_tokens_in_logs()
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        redact_tokens_in_logs()  # again, in case a logging set-up since then dropped the filter
        try:
            await self.manager.start()
        except (SchemaOutdated, SchemaUnknown, DatabaseUnsupported, InstanceIdInUse) as exc:
            logger.critical("not starting: %s", exc.detail)  # the one line an operator reads
            raise
        self.tasks.start()
        watcher = asyncio.create_task(self._watch_exit(), name="agentos-exit-watcher")
        try:
            with _gc_threshold(self.settings.http.gc_threshold):
                yield
        finally:
            watcher.cancel()
            await self.tasks.aclose()
            await self.manager.aclose()
            await self._close_components()

    async def _watch_exit(self) -> None:
        # uvicorn's SIGTERM reaches us through sse-starlette's patch of uvicorn (AppStatus), or
        # begin_shutdown (``agentos serve``); start the run grace period, and the streams' end
        # after it, as soon as it does, not only once every stream has closed and the lifespan
        # ends.
        while not (AppStatus.should_exit or self._exit.is_set()):
            await asyncio.sleep(0.2)
        settings = self.settings
        self._streams.shutdown(settings.runs.shutdown_grace + settings.streams.shutdown_extra)
        await self.tasks.aclose()  # a draining instance fires nothing more
        self.manager.begin_shutdown()

    def begin_shutdown(self) -> None:
        """Start draining: new runs get 503, running ones get the grace period."""
        self._exit.set()
        self.manager.begin_shutdown()

    # -- routes --------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """``GET /health``: the status and the checks behind it (``agentos/health.py``); 200
        while ``running`` or ``degraded``, 503 while ``down`` or ``draining``."""
        status, body = await self.health_checks.report()
        if status in ("running", "degraded"):
            return JSONResponse(body)
        retry_after = {"Retry-After": str(self.settings.http.retry_after)}
        return JSONResponse(body, status_code=503, headers=retry_after)

    async def health_live(self, request: Request) -> Response:
        """``GET /health/live``: 200 while the process serves requests (no check)."""
        return JSONResponse({"status": "alive", "instance_id": self.settings.instance_id})

    async def health_ready(self, request: Request) -> Response:
        """``GET /health/ready``: 200 when this instance should get traffic; 503 while draining,
        down, or when the database does not answer."""
        reason = await self.health_checks.ready()
        if reason is None:
            return JSONResponse({"status": "ready", "instance_id": self.settings.instance_id})
        body = {"status": "not_ready", "reason": reason, "instance_id": self.settings.instance_id}
        retry_after = {"Retry-After": str(self.settings.http.retry_after)}
        return JSONResponse(body, status_code=503, headers=retry_after)

    async def openapi(self, request: Request) -> Response:
        """``GET /openapi.json``: the OpenAPI 3.1 document of these routes (``openapi.py``)."""
        ids = sorted({component.id for component in self.manager.components.values()})
        return JSONResponse(openapi.document(ids))

    async def config(self, request: Request) -> Response:
        body: dict[str, Any] = {
            kind: [c.describe() for c in self.manager.list_components(kind)] for kind in KINDS
        }
        body["instance_id"] = self.settings.instance_id
        body["security"] = self.authenticator.enabled
        return JSONResponse(body)

    async def list_components(self, request: Request) -> Response:
        kind = _kind(request)
        return JSONResponse([c.describe() for c in self.manager.list_components(kind)])

    async def get_component(self, request: Request) -> Response:
        """``GET /{kind}/{id}``: description, version, tags, registered_at, paused, stats."""
        component = self._component(request)
        return JSONResponse(await self.manager.lifecycle.describe(component))

    async def pause_component(self, request: Request) -> Response:
        """``POST /{kind}/{id}/pause``: new runs get 409 ``component_paused`` on every instance
        (within ``component_state_ttl``); runs in flight finish. Operator key or ``admin``."""
        return await self._set_paused(request, True)

    async def resume_component(self, request: Request) -> Response:
        """``POST /{kind}/{id}/resume``: the component takes new runs again."""
        return await self._set_paused(request, False)

    async def _set_paused(self, request: Request, paused: bool) -> Response:
        authorize(request.scope, "admin")
        component = self._component(request)
        await self.manager.lifecycle.set_paused(component.kind.name, component.id, paused)
        return JSONResponse(await self.manager.lifecycle.describe(component))

    async def create_run(self, request: Request) -> Response:
        """``POST /{kind}/{id}/runs``: start a run and stream it, answer 202, or wait for it
        (PROTOCOL.md). With an ``Idempotency-Key``, a repeat of an earlier create answers with
        that create's run (``agentos/idempotency.py``)."""
        caller = authorize(request.scope, "runs:write")
        component = self._component(request)
        fields = await forms.read_fields(
            request, self.settings.http.max_body_bytes, self.settings.http.body_timeout
        )
        key = forms.idempotency_key(request)
        message = forms.message(fields)
        stream = forms.flag(fields, "stream", True)
        background = forms.flag(fields, "background", False)
        wait = forms.flag(fields, "wait", not stream and not background)
        if stream and wait:
            raise InvalidRequest("wait applies to stream=false only")
        budget = self._wait_budget(fields)
        session_id = forms.text(fields, "session_id")
        user_id = caller.user_for_new(forms.text(fields, "user_id"))
        run_id = forms.client_run_id(request, fields)
        if run_id is not None:
            check_id("run_id", run_id)  # before it goes into an idempotency key's row
        options = forms.run_options(fields)

        async def find(run_id: str) -> RunRecord | None:
            try:
                return await self.manager.get_run(
                    run_id, kind=component.kind.name, component_id=component.id
                )
            except RunNotFound:
                return None

        entry: IdempotencyKey | None = None
        if key is not None:
            policy = options.retry_policy
            # What makes the run, normalized (a form's "true" and JSON's true alike); not
            # wait_timeout_seconds, which only says how long this answer may wait.
            asked = {
                "message": message,
                "session_id": session_id,
                "user_id": user_id,
                "run_id": run_id,
                "stream": stream,
                "background": background,
                "wait": wait,
                "retry_policy": None if policy is None else policy.to_dict(),
                "timeout_seconds": options.timeout,
                "multitask": options.multitask,
            }
            entry = IdempotencyKey(
                key=key,
                kind=component.kind.name,
                component_id=component.id,
                user_scope=caller.user_id or "",
                request_hash=request_hash(asked),
                run_id=run_id or str(uuid.uuid4()),
                status_code=200 if stream or wait else 202,
                token=uuid.uuid4().hex,
            )
            found = await self.idempotency.claim(entry, find)
            if found is not None:
                return await self._replay(found, caller, stream=stream, wait=wait, budget=budget)
            run_id = entry.run_id
        run_stream: RunStream | None = None
        try:
            if stream:
                record, run_stream = await self.manager.start_and_follow(
                    component,
                    message,
                    session_id=session_id,
                    user_id=user_id,
                    run_id=run_id,
                    cancel_on_close=not background,
                    options=options,
                )
            else:
                record = await self.manager.start_run(
                    component,
                    message,
                    session_id=session_id,
                    user_id=user_id,
                    run_id=run_id,
                    options=options,
                )
        except BaseException as exc:
            if entry is not None:
                await self.idempotency.release(entry, exc, find)
            raise
        headers = self._run_headers(record)
        if run_stream is not None:
            return self._sse(run_stream, headers)
        if not wait:
            return self._accepted(record, headers)
        return await self._wait_for(record, headers, budget)

    def _wait_budget(self, fields: Mapping[str, Any]) -> float | None:
        """Seconds a waiting create waits: ``wait_timeout_seconds`` capped by
        ``max_wait_seconds`` (None: no limit)."""
        cap = self.settings.http.max_wait or None
        asked = forms.number(fields, "wait_timeout_seconds", _MAX_WAIT)
        if asked is None:
            return cap
        return asked if cap is None else min(asked, cap)

    def _run_headers(self, record: RunRecord) -> dict[str, str]:
        headers = {
            "X-Run-Id": record.run_id,
            "X-Session-Id": record.session_id,
            "Location": f"/{record.kind}/{record.component_id}/runs/{record.run_id}",
        }
        token = self.authenticator.resume_token(record.run_id, record.user_id)
        if token is not None:
            headers["X-Resume-Token"] = token
        return headers

    def _accepted(self, record: RunRecord, headers: Mapping[str, str]) -> Response:
        """202: the run is accepted and goes on in the background."""
        body = {
            "run_id": record.run_id,
            "session_id": record.session_id,
            "status": record.status.value,
        }
        token = headers.get("X-Resume-Token")
        if token is not None:
            body["resume_token"] = token
        return JSONResponse(body, status_code=202, headers=headers)

    async def _wait_for(
        self, record: RunRecord, headers: Mapping[str, str], budget: float | None
    ) -> Response:
        """200 with the run once it has ended, or 504 when ``budget`` seconds pass first (the
        run goes on; its id and status are in the body)."""
        try:
            final = await self.manager.wait(record.run_id, budget)
        except TimeoutError:
            waited = 0.0 if budget is None else budget
            now = await self.manager.get_run(record.run_id)
            body = {
                "detail": f"the run did not end within {waited:g} s; it goes on",
                "code": "wait_timeout",
                "run_id": now.run_id,
                "session_id": now.session_id,
                "status": now.status.value,
                "wait_timeout_seconds": waited,
                "request_timeout_seconds": self.settings.http.max_wait or None,
            }
            return JSONResponse(body, status_code=504, headers=headers)
        return JSONResponse(final.to_dict(), headers=headers)

    async def _replay(
        self,
        record: RunRecord,
        caller: Principal,
        *,
        stream: bool,
        wait: bool,
        budget: float | None,
    ) -> Response:
        """The answer to a repeated create (same Idempotency-Key, same request): what the first
        create answered, for the run it made; ``Idempotent-Replayed: true`` says so."""
        headers = {**self._run_headers(record), "Idempotent-Replayed": "true"}
        if stream:
            run_stream = await self.manager.open_stream(
                record.run_id,
                -1,
                kind=record.kind,
                component_id=record.component_id,
                owner=caller.owner,
            )
            if run_stream is not None:
                return self._sse(run_stream, headers)
            return JSONResponse(record.to_dict(), headers=headers)  # ended without events
        if not wait:
            return self._accepted(record, headers)
        return await self._wait_for(record, headers, budget)

    async def list_runs(self, request: Request) -> Response:
        caller = authorize(request.scope, "runs:read")
        component = self._component(request)
        params = request.query_params
        status_filter = forms.run_status(params)
        limit = forms.limit(params)
        offset = forms.offset(params, forms.MAX_LIMIT)  # the store reads offset + limit rows
        user_id = forms.filter_text(params, "user_id")
        session_id = forms.filter_id(params, "session_id")
        if caller.owner is not None:
            if user_id not in (None, caller.owner):
                return JSONResponse([])  # only the caller's own runs are ever listed
            user_id = caller.owner
        records = await self.manager.list_runs(
            component.kind.name,
            component.id,
            session_id=session_id,
            user_id=user_id,
            status=status_filter,
            limit=offset + limit,
        )
        return self._run_list(records[offset:], offset)

    async def get_run(self, request: Request) -> Response:
        caller = authorize(request.scope, "runs:read")
        record = await self._run(request, caller, request.query_params.get("session_id") or None)
        return JSONResponse(record.to_dict())

    async def list_attempts(self, request: Request) -> Response:
        """``GET .../runs/{run_id}/attempts``: the run's attempts, oldest first."""
        caller = authorize(request.scope, "runs:read")
        record = await self._run(request, caller, request.query_params.get("session_id") or None)
        return JSONResponse(record.attempt_list())

    async def cancel(self, request: Request) -> Response:
        caller = authorize(request.scope, "runs:cancel")
        fields = await forms.read_fields(
            request, self.settings.http.max_body_bytes, self.settings.http.body_timeout
        )
        record = await self._run(request, caller, forms.text(fields, "session_id"))
        if not record.status.ended:
            record = await self.manager.cancel(record.run_id)
        return JSONResponse(record.to_dict())

    async def resume(self, request: Request) -> Response:
        caller = authorize(request.scope, "runs:read")
        component = self._component(request)
        if request.method == "POST":
            fields = await forms.read_fields(
                request, self.settings.http.max_body_bytes, self.settings.http.body_timeout
            )
        else:
            fields = dict(request.query_params)
        cursor = fields.get("last_event_index")
        if cursor is None or cursor == "":
            cursor = request.headers.get("last-event-id")
        last_event_index = forms.cursor(cursor)
        run_stream = await self.manager.open_stream(
            request.path_params["run_id"],
            last_event_index,
            kind=component.kind.name,
            component_id=component.id,
            session_id=forms.text(fields, "session_id"),
            owner=caller.owner,
        )
        if run_stream is None:
            return Response(status_code=204)
        return self._sse(run_stream, {"X-Run-Id": run_stream.run_id})

    async def scrape(self, request: Request) -> Response:
        """``GET /metrics``: the operator key or the ``admin`` scope, unless ``metrics_public``."""
        if not self.settings.monitoring.metrics_public:
            authorize(request.scope, "admin")
        return await self.metrics.endpoint(request)

    async def list_sessions(self, request: Request) -> Response:
        caller = authorize(request.scope, "sessions:read")
        params = request.query_params
        kind = params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
        limit = forms.limit(params)
        user_id = forms.filter_text(params, "user_id")
        if caller.owner is not None:
            if user_id not in (None, caller.owner):
                return JSONResponse([])  # only the caller's own sessions are ever listed
            user_id = caller.owner
        sessions = await self.manager.sessions.list_sessions(
            user_id=user_id,
            kind=kind,
            component_id=forms.filter_id(params, "component_id"),
            limit=limit,
        )
        return JSONResponse([s.to_dict() for s in sessions])

    async def get_session(self, request: Request) -> Response:
        """The session's newest runs with their messages, within ``list_max_bytes``: the page
        starts ``offset`` runs back from the newest; ``X-Next-Offset`` names the next page."""
        caller = authorize(request.scope, "sessions:read")
        session_id = request.path_params["session_id"]
        offset = forms.offset(request.query_params, _MAX_SESSION_RUNS)
        session = await self.manager.sessions.get_session(session_id, owner=caller.owner)
        by_run: dict[str, list[bytes]] = {}
        for message in session.messages:
            by_run.setdefault(message.run_id, []).append(dumps(message.to_dict()).encode())
        budget = self.settings.http.list_max_bytes
        runs: list[bytes] = []
        messages: list[list[bytes]] = []
        size = 0
        headers: dict[str, str] = {}
        newest_first = session.runs[::-1][offset:]
        for taken, run in enumerate(newest_first):
            item = dumps(run.to_dict()).encode()
            its = by_run.get(run.run_id, [])
            cost = len(item) + sum(len(m) + 1 for m in its) + 1
            if runs and size + cost > budget:
                headers["X-Next-Offset"] = str(offset + taken)
                break
            runs.append(item)
            messages.append(its)
            size += cost
        runs.reverse()  # oldest first, as in the whole session
        messages.reverse()
        body = b"".join(
            [
                b'{"session_id":',
                dumps(session.session_id).encode(),
                b',"runs":[',
                b",".join(runs),
                b'],"messages":[',
                b",".join(m for its in messages for m in its),
                b"]}",
            ]
        )
        return Response(body, media_type="application/json", headers=headers)

    async def delete_session(self, request: Request) -> Response:
        caller = authorize(request.scope, "sessions:write")
        session_id = request.path_params["session_id"]
        await self.manager.sessions.delete_session(session_id, owner=caller.owner)
        return Response(status_code=204)

    # -- helpers -------------------------------------------------------------------------------

    def _component(self, request: Request) -> Component:
        return self.manager.component(_kind(request), request.path_params["id"])

    async def _run(self, request: Request, caller: Principal, session_id: str | None) -> RunRecord:
        component = self._component(request)
        return await self.manager.get_run(
            request.path_params["run_id"],
            kind=component.kind.name,
            component_id=component.id,
            session_id=session_id,
            owner=caller.owner,
        )

    def _run_list(self, records: Sequence[RunRecord], offset: int) -> Response:
        """The JSON list of ``records`` within ``list_max_bytes`` (at least one run); when runs
        are left out, ``X-Next-Offset`` is the ``offset`` that lists them."""
        budget = self.settings.http.list_max_bytes
        max_chars = self.settings.http.list_max_field_chars
        items: list[bytes] = []
        size = 2  # the brackets
        headers: dict[str, str] = {}
        for record in records:
            item = dumps(record.to_list_item(max_chars)).encode("utf-8")
            if items and size + 1 + len(item) > budget:
                headers["X-Next-Offset"] = str(offset + len(items))
                break
            items.append(item)
            size += len(item) + (1 if len(items) > 1 else 0)
        body = b"[" + b",".join(items) + b"]"
        return Response(body, media_type="application/json", headers=headers)

    def _sse(self, run_stream: RunStream, headers: Mapping[str, str]) -> Response:
        return event_stream(run_stream, headers, self.settings, streams=self._streams)


@contextlib.contextmanager
def _gc_threshold(threshold: int) -> Iterator[None]:
    """The young generation's collection threshold while the app serves (0: Python's).

    A profile of 1,000 concurrent runs (bench scenario 3) on Python's default of 700 spent about
    a third of the server's CPU in the garbage collector: request objects that live a few
    milliseconds were promoted to the older generations, which set off full collections, and
    every full collection walks all buffered events (see bench/NOTES.md).
    """
    if threshold <= 0:
        yield
        return
    previous = gc.get_threshold()
    gc.set_threshold(threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


async def _static_file(request: Request) -> Response:
    path = _STATIC / _PUBLIC_FILES[request.url.path]
    media_type = "text/javascript" if path.suffix == ".js" else "text/html"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


def _kind(request: Request) -> str:
    kind: str = request.path_params["kind"]
    if kind not in KINDS:
        raise HTTPException(404, f"no route {request.url.path}")
    return kind


async def _http_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return error_body(exc.detail, code, exc.status_code, exc.headers)


async def _internal_error_response(request: Request, exc: Exception) -> Response:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_body("internal server error", "internal_error", 500)
