"""The ``/tasks`` routes (PROTOCOL.md, "Tasks"): the HTTP face of :class:`~agentos.tasks.TaskManager`.

Scopes: ``tasks:read`` to list and read tasks and their runs, ``tasks:write`` to create, change,
delete, pause, resume and trigger them. A user (JWT) sees and changes only the tasks it owns
(others are "not found"); the operator and ``admin`` see all.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentos.errors import InvalidRequest, TaskNotFound, WaitTimeout
from agentos.events import KINDS
from agentos.http import forms
from agentos.http.auth import Principal, authorize
from agentos.http.middleware import error_json
from agentos.schedules import TaskRecord
from agentos.settings import Settings
from agentos.tasks import TaskManager

__all__ = ["TaskRoutes"]

#: Most tasks or runs one list returns, and the furthest ``offset`` it starts at.
_MAX_OFFSET = 1_000_000


class TaskRoutes:
    """The task routes of one server."""

    def __init__(self, tasks: TaskManager, settings: Settings) -> None:
        self.tasks = tasks
        self.settings = settings

    def routes(self) -> list[Route]:
        return [
            Route("/tasks", self.create, methods=["POST"]),
            Route("/tasks", self.list, methods=["GET"]),
            Route("/tasks/{task_id}", self.get, methods=["GET"]),
            Route("/tasks/{task_id}", self.update, methods=["PATCH"]),
            Route("/tasks/{task_id}", self.delete, methods=["DELETE"]),
            Route("/tasks/{task_id}/pause", self.pause, methods=["POST"]),
            Route("/tasks/{task_id}/resume", self.resume, methods=["POST"]),
            Route("/tasks/{task_id}/trigger", self.trigger, methods=["POST"]),
            Route("/tasks/{task_id}/runs", self.runs, methods=["GET"]),
        ]

    async def create(self, request: Request) -> Response:
        caller = authorize(request.scope, "tasks:write")
        fields = await self._body(request)
        user_id = fields.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise InvalidRequest("user_id must be a string")
        owner = caller.user_for_new(user_id)
        if owner is not None:
            fields["user_id"] = owner
        task = await self.tasks.create(fields)
        headers = {"Location": f"/tasks/{task.task_id}"}
        return JSONResponse(task.to_dict(), status_code=201, headers=headers)

    async def list(self, request: Request) -> Response:
        caller = authorize(request.scope, "tasks:read")
        params = request.query_params
        kind = params.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
        active = params.get("active") or None
        limit, offset = forms.limit(params), forms.offset(params, _MAX_OFFSET)
        user_id = forms.filter_text(params, "user_id")
        if caller.owner is not None:
            if user_id not in (None, caller.owner):
                return JSONResponse([])
            user_id = caller.owner
        found = await self.tasks.list_tasks(
            kind=kind,
            component_id=forms.filter_id(params, "component_id"),
            active=None if active is None else forms.flag(params, "active", True),
            tag=forms.filter_text(params, "tag"),
            user_id=user_id,
            limit=limit,
            offset=offset,
        )
        return JSONResponse([task.to_dict() for task in found])

    async def get(self, request: Request) -> Response:
        task = await self._task(request, authorize(request.scope, "tasks:read"))
        return JSONResponse(task.to_dict())

    async def update(self, request: Request) -> Response:
        caller = authorize(request.scope, "tasks:write")
        task = await self._task(request, caller)
        fields = await self._body(request)
        if "user_id" in fields and not caller.operator:
            raise InvalidRequest("user_id cannot be changed")
        updated = await self.tasks.update(task.task_id, fields)
        return JSONResponse(updated.to_dict())

    async def delete(self, request: Request) -> Response:
        task = await self._task(request, authorize(request.scope, "tasks:write"))
        await self.tasks.delete(task.task_id)
        return Response(status_code=204)

    async def pause(self, request: Request) -> Response:
        task = await self._task(request, authorize(request.scope, "tasks:write"))
        return JSONResponse((await self.tasks.pause(task.task_id)).to_dict())

    async def resume(self, request: Request) -> Response:
        task = await self._task(request, authorize(request.scope, "tasks:write"))
        return JSONResponse((await self.tasks.resume(task.task_id)).to_dict())

    async def trigger(self, request: Request) -> Response:
        """``POST /tasks/{id}/trigger``: 202 and the run; with ``wait=true``, 200 and the run
        once it has ended, or 504 ``wait_timeout`` after ``wait_seconds`` (at most
        ``task_wait_timeout``), with the run's ``X-Run-Id`` and ``Location``."""
        task = await self._task(request, authorize(request.scope, "tasks:write"))
        fields = {**request.query_params, **await self._body(request)}
        wait = None
        if forms.flag(fields, "wait", False):
            wait = self.settings.tasks.wait_timeout
            if fields.get("wait_seconds") not in (None, ""):
                seconds = forms.integer(fields["wait_seconds"], "wait_seconds")
                if seconds < 1:
                    raise InvalidRequest("wait_seconds must be 1 or more")
                wait = min(wait, float(seconds))
        try:
            record = await self.tasks.trigger(task.task_id, wait=wait)
        except WaitTimeout as exc:
            # The run goes on: the answer says which, to follow it.
            return error_json(exc, _run_headers(task.kind, task.component_id, exc.run_id))
        headers = _run_headers(record.kind, record.component_id, record.run_id)
        return JSONResponse(
            record.to_dict(), status_code=202 if wait is None else 200, headers=headers
        )

    async def runs(self, request: Request) -> Response:
        caller = authorize(request.scope, "tasks:read")
        task = await self._task(request, caller)
        params = request.query_params
        records = await self.tasks.runs(
            task.task_id,
            status=forms.run_status(params),
            limit=forms.limit(params),
            offset=forms.offset(params, _MAX_OFFSET),
        )
        max_chars = self.settings.http.list_max_field_chars
        return JSONResponse([record.to_list_item(max_chars) for record in records])

    async def _task(self, request: Request, caller: Principal) -> TaskRecord:
        task_id = request.path_params["task_id"]
        task = await self.tasks.get(task_id)
        if not caller.may_see(task.user_id):
            raise TaskNotFound(task_id)
        return task

    async def _body(self, request: Request) -> dict[str, Any]:
        http = self.settings.http
        return await forms.read_fields(request, http.max_body_bytes, http.body_timeout)


def _run_headers(kind: str, component_id: str, run_id: str) -> dict[str, str]:
    return {"X-Run-Id": run_id, "Location": f"/{kind}/{component_id}/runs/{run_id}"}
