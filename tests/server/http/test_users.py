"""Users: JWT authentication, scopes and per-user isolation, over a real uvicorn.

One server (HS256 secret + a JWKS of ES256 keys served by a second local server + the operator's
security key, with issuer and audience) answers the whole authorization matrix: every route and
WebSocket action, for every kind of credential.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.client import connect

from agentos import Settings
from agentos.errors import InvalidToken
from agentos.http.auth import Authenticator, resume_principal, sign_resume_token
from tests import apps
from tests.servers import ThreadServer

KEY = "operator-key"
SECRET = "hs256-shared-secret-of-the-identity-provider"
ISSUER = "https://idp.example.test"
AUDIENCE = "agentos"
RUN_SCOPES = ("runs:read", "runs:write", "runs:cancel")


# -- keys, tokens and the JWKS server ---------------------------------------------------------


@dataclass
class _Keys:
    """Signing keys by kid, and the JWKS document the JWKS server serves (mutable: rotation)."""

    private: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    fetches: int = 0

    def add(self, kid: str) -> None:
        self.private[kid] = ec.generate_private_key(ec.SECP256R1())

    def document(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private[kid].public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "ES256"})
        return {"keys": keys}


def _jwks_app(keys: _Keys) -> Starlette:
    async def jwks(request: Request) -> Response:
        keys.fetches += 1
        return JSONResponse(keys.document())

    return Starlette(routes=[Route("/jwks.json", jwks)])


def mint(
    sub: str = "alice",
    scopes: tuple[str, ...] = RUN_SCOPES,
    *,
    key: Any = SECRET,
    alg: str = "HS256",
    kid: str | None = None,
    exp_in: float = 300,
    iss: str = ISSUER,
    aud: str = AUDIENCE,
) -> str:
    """A test JWT, as an identity provider would issue it (README: "Minting a test token")."""
    claims = {"sub": sub, "scope": " ".join(scopes), "iss": iss, "aud": aud}
    claims["exp"] = int(time.time() + exp_in)
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    """The matrix server, its keys, and one finished run of each kind per user."""

    url: str
    keys: _Keys
    runs: dict[tuple[str, str], str]  # (user, kind) -> run id
    sessions: dict[str, str]  # user -> the session of their agent run

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/workflows/ws"

    def es256(self, kid: str, **claims: Any) -> str:
        return mint(key=self.keys.private[kid], alg="ES256", kid=kid, **claims)


def _wait_ended(http: httpx.Client, path: str, headers: dict[str, str]) -> None:
    for _ in range(500):
        if http.get(path, headers=headers).json()["status"] in ("COMPLETED", "ERROR", "CANCELLED"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not end")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys = _Keys()
    for kid in ("k1", "k2", "stray"):
        keys.add(kid)
    keys.published = ["k1"]
    jwks_server = ThreadServer(_jwks_app(keys))
    jwks_server.start()
    tmp = tmp_path_factory.mktemp("users")
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp / 'agentos.db'}",
        instance_id="users",
        demo_delay=0.0,
        security_key=KEY,
        jwt_secret=SECRET,
        jwt_jwks_url=f"{jwks_server.url}/jwks.json",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_leeway=0,
        jwks_refresh_min_interval=3600,
    )
    server = ThreadServer(apps.build(settings).app)
    server.start()
    runs: dict[tuple[str, str], str] = {}
    sessions: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for user in ("alice", "bob"):
            auth = bearer(mint(user))
            for kind, component in (("agents", "echo"), ("workflows", "flow")):
                created = http.post(
                    f"/{kind}/{component}/runs",
                    data={"message": f"hello from {user}", "stream": "false", "background": "true"},
                    headers=auth,
                )
                assert created.status_code == 202, created.text
                run_id = created.json()["run_id"]
                _wait_ended(http, f"/{kind}/{component}/runs/{run_id}", auth)
                runs[user, kind] = run_id
                if kind == "agents":
                    sessions[user] = created.json()["session_id"]
    try:
        yield World(server.url, keys, runs, sessions)
    finally:
        server.stop()
        jwks_server.stop()


# -- the HTTP matrix ---------------------------------------------------------------------------

#: (name, method, path, scope it needs or None, form data). ``{run}`` is alice's agent run.
ROUTES = [
    ("config", "GET", "/config", None, None),
    ("components", "GET", "/agents", None, None),
    ("create", "POST", "/agents/echo/runs", "runs:write", {"message": "x", "stream": "false"}),
    ("list", "GET", "/agents/echo/runs", "runs:read", None),
    ("get", "GET", "/agents/echo/runs/{run}", "runs:read", None),
    ("resume-get", "GET", "/agents/echo/runs/{run}/resume", "runs:read", None),
    ("resume-post", "POST", "/agents/echo/runs/{run}/resume", "runs:read", {}),
    ("cancel", "POST", "/agents/echo/runs/{run}/cancel", "runs:cancel", {}),
]

#: Credentials that never authenticate, and the 401 code they get.
BAD = ["none", "bad-signature", "expired", "wrong-audience", "wrong-issuer", "unknown-kid", "alg-none",
       "wrong-key", "not-yet-valid", "no-sub"]  # fmt: skip


def _bad_credential(world: World, case: str) -> dict[str, str]:
    if case == "none":
        return {}
    if case == "bad-signature":
        return bearer(mint(key="not-the-secret-but-long-enough-for-hmac"))
    if case == "expired":
        return bearer(mint(exp_in=-60))
    if case == "wrong-audience":
        return bearer(mint(aud="someone-else"))
    if case == "wrong-issuer":
        return bearer(mint(iss="https://evil.example.test"))
    if case == "unknown-kid":
        return bearer(world.es256("stray"))  # a real ES256 key the JWKS does not publish
    if case == "alg-none":
        claims = {"sub": "alice", "scope": "runs:read", "exp": int(time.time()) + 60}
        claims.update(iss=ISSUER, aud=AUDIENCE)
        return bearer(jwt.encode(claims, None, algorithm="none"))
    if case == "wrong-key":
        return bearer("not-the-operator-key")
    if case == "not-yet-valid":
        claims = {"sub": "alice", "exp": int(time.time()) + 600, "nbf": int(time.time()) + 300}
        claims.update(iss=ISSUER, aud=AUDIENCE, scope="runs:read")
        return bearer(jwt.encode(claims, SECRET, algorithm="HS256"))
    assert case == "no-sub"
    claims = {"exp": int(time.time()) + 60, "iss": ISSUER, "aud": AUDIENCE, "scope": "runs:read"}
    return bearer(jwt.encode(claims, SECRET, algorithm="HS256"))


def _call(world: World, route: str, headers: dict[str, str]) -> httpx.Response:
    _, method, path, _, data = next(r for r in ROUTES if r[0] == route)
    path = path.format(run=world.runs["alice", "agents"])
    with httpx.Client(base_url=world.url, timeout=30) as http:
        return http.request(method, path, data=data, headers=headers)


@pytest.mark.parametrize("route", [r[0] for r in ROUTES])
@pytest.mark.parametrize("case", BAD)
def test_no_valid_credential_is_401(world: World, route: str, case: str) -> None:
    answer = _call(world, route, _bad_credential(world, case))
    expected = {"none": "not_authenticated"}.get(case, "invalid_token")
    assert (answer.status_code, answer.json()["code"]) == (401, expected), answer.text
    assert world.runs["alice", "agents"] not in answer.text


@pytest.mark.parametrize("route", [r[0] for r in ROUTES if r[3] is not None])
def test_each_missing_scope_is_403_naming_it(world: World, route: str) -> None:
    needed = next(r[3] for r in ROUTES if r[0] == route)
    others = tuple(s for s in (*RUN_SCOPES, "sessions:read", "tasks:write") if s != needed)
    answer = _call(world, route, bearer(mint("alice", others)))
    assert (answer.status_code, answer.json()["code"]) == (403, "insufficient_scope")
    assert needed in answer.json()["detail"]


@pytest.mark.parametrize("route", [r[0] for r in ROUTES])
@pytest.mark.parametrize("who", ["owner", "operator", "admin", "owner-es256"])
def test_the_owner_the_operator_and_an_admin_are_served(world: World, route: str, who: str) -> None:
    headers = {
        "owner": bearer(mint("alice")),
        "operator": bearer(KEY),
        "admin": bearer(mint("carol", (*RUN_SCOPES, "admin"))),
        "owner-es256": bearer(world.es256("k1")),
    }[who]
    answer = _call(world, route, headers)
    assert answer.status_code in (200, 202), answer.text
    if route in ("get", "resume-get", "resume-post", "cancel", "list"):
        assert world.runs["alice", "agents"] in answer.text


@pytest.mark.parametrize("route", ["get", "resume-get", "resume-post", "cancel"])
def test_another_users_run_is_404(world: World, route: str) -> None:
    answer = _call(world, route, bearer(mint("bob")))
    assert (answer.status_code, answer.json()["code"]) == (404, "run_not_found")
    # 404 exactly as for a run that does not exist: existence does not leak.
    with httpx.Client(base_url=world.url, timeout=30) as http:
        missing = http.get("/agents/echo/runs/no-such-run", headers=bearer(mint("bob")))
    assert missing.json() == answer.json()


def test_lists_show_only_the_callers_runs(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=30) as http:
        mine = http.get("/agents/echo/runs", headers=bearer(mint("bob"))).json()
        named = http.get(
            "/agents/echo/runs", params={"user_id": "alice"}, headers=bearer(mint("bob"))
        ).json()
        everyone = http.get("/agents/echo/runs", headers=bearer(KEY)).json()
    assert {r["user_id"] for r in mine} == {"bob"}
    assert named == []
    assert {"alice", "bob"} <= {r["user_id"] for r in everyone}


def test_user_id_cannot_claim_another_identity(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=30) as http:
        data = {"message": "x", "stream": "false", "user_id": "alice"}
        claimed = http.post("/agents/echo/runs", data=data, headers=bearer(mint("bob")))
        assert (claimed.status_code, claimed.json()["code"]) == (403, "not_authorized")
        own = http.post(
            "/agents/echo/runs", data={**data, "user_id": "bob"}, headers=bearer(mint("bob"))
        )
        assert own.status_code == 200 and own.json()["user_id"] == "bob"
        implied = http.post("/agents/echo/runs", data={"message": "x", "stream": "false"},
                            headers=bearer(mint("bob")))  # fmt: skip
        assert implied.json()["user_id"] == "bob"
        by_operator = http.post("/agents/echo/runs", data=data, headers=bearer(KEY))
        assert by_operator.status_code == 200 and by_operator.json()["user_id"] == "alice"


# -- sessions and metrics ----------------------------------------------------------------------

#: (path, scope) of the session and metrics routes; ``{session}`` is alice's session.
OTHER_ROUTES = [
    ("/sessions", "sessions:read"),
    ("/sessions/{session}", "sessions:read"),
    ("/metrics", "admin"),
]


@pytest.mark.parametrize(("path", "scope"), OTHER_ROUTES)
def test_sessions_and_metrics_need_a_credential_and_their_scope(
    world: World, path: str, scope: str
) -> None:
    path = path.format(session=world.sessions["alice"])
    with httpx.Client(base_url=world.url, timeout=30) as http:
        for case in ("none", "expired", "bad-signature"):
            answer = http.get(path, headers=_bad_credential(world, case))
            assert answer.status_code == 401, (case, answer.text)
        others = tuple(s for s in (*RUN_SCOPES, "sessions:read", "admin") if s != scope)
        missing = http.get(path, headers=bearer(mint("alice", others)))
        assert (missing.status_code, missing.json()["code"]) == (403, "insufficient_scope")
        assert scope in missing.json()["detail"]
        assert http.get(path, headers=bearer(KEY)).status_code == 200


def test_sessions_belong_to_their_user(world: World) -> None:
    alice, bob = world.sessions["alice"], world.sessions["bob"]
    read = (*RUN_SCOPES, "sessions:read", "sessions:write")
    with httpx.Client(base_url=world.url, timeout=30) as http:
        listed = http.get("/sessions", headers=bearer(mint("alice", read))).json()
        assert alice in {s["session_id"] for s in listed} and bob not in str(listed)
        named = http.get(
            "/sessions", params={"user_id": "bob"}, headers=bearer(mint("alice", read))
        )
        assert named.json() == []
        own = http.get(f"/sessions/{alice}", headers=bearer(mint("alice", read)))
        assert own.status_code == 200 and world.runs["alice", "agents"] in own.text
        for method in ("GET", "DELETE"):
            other = http.request(method, f"/sessions/{alice}", headers=bearer(mint("bob", read)))
            assert (other.status_code, other.json()["code"]) == (404, "session_not_found")
            assert world.runs["alice", "agents"] not in other.text
        everyone = http.get("/sessions", headers=bearer(KEY)).json()
        assert {alice, bob} <= {s["session_id"] for s in everyone}
        assert http.get(f"/sessions/{alice}", headers=bearer(KEY)).status_code == 200


# -- resume tokens -----------------------------------------------------------------------------


def test_resume_tokens_carry_the_user_and_open_only_that_users_run(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=30) as http:
        created = http.post(
            "/agents/echo/runs",
            data={"message": "x", "stream": "false", "background": "true"},
            headers=bearer(mint("alice")),
        )
        run_id, token = created.json()["run_id"], created.json()["resume_token"]
        granted = resume_principal(KEY, run_id, token, now=time.time())
        assert granted is not None and granted.user_id == "alice"
        own = http.get(f"/agents/echo/runs/{run_id}/resume", params={"token": token})
        assert own.status_code == 200 and run_id in own.text
        bobs_run = world.runs["bob", "agents"]
        other = http.get(f"/agents/echo/runs/{bobs_run}/resume", params={"token": token})
        assert other.status_code == 401 and bobs_run not in other.text
        # A token signed for bob's run but naming alice (as if forged for her) does not open it.
        forged = sign_resume_token("guess", bobs_run, ttl=60, now=time.time(), user_id="alice")
        assert (
            http.get(f"/agents/echo/runs/{bobs_run}/resume", params={"token": forged}).status_code
            == 401
        )
        # The token opens nothing but the resume stream.
        assert http.get(f"/agents/echo/runs/{run_id}", params={"token": token}).status_code == 401


def test_a_resume_token_for_a_run_that_changed_hands_is_refused() -> None:
    """Signature binds the user: the same run id with another user does not verify."""
    token = sign_resume_token(KEY, "run-1", ttl=60, now=1000.0, user_id="alice")
    principal = resume_principal(KEY, "run-1", token, now=1001.0)
    assert principal is not None and principal.user_id == "alice"
    expiry, _user, signature = token.split(".")
    bob = jwt.utils.base64url_encode(b"bob").decode()
    assert resume_principal(KEY, "run-1", f"{expiry}.{bob}.{signature}", now=1001.0) is None
    assert resume_principal(KEY, "run-1", f"{expiry}.{signature}", now=1001.0) is None


# -- the WebSocket -----------------------------------------------------------------------------


async def _ws(
    world: World, frames: list[dict[str, Any]], header: str | None = None
) -> list[dict[str, Any]]:
    """Send frames one by one; after each, the first answer frame (skipping run events)."""
    headers = {"Authorization": f"Bearer {header}"} if header else {}
    answers = []
    async with connect(world.ws_url, additional_headers=headers, open_timeout=10) as ws:
        greeting = json.loads(await ws.recv())
        answers.append(greeting)
        for frame in frames:
            await ws.send(json.dumps(frame))
            while True:
                got = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if got.get("event") in ("authenticated", "auth_error", "error", "RunStarted",
                                        "pong", "replay"):  # fmt: skip
                    answers.append(got)
                    break
    return answers


@pytest.mark.parametrize("case", BAD)
async def test_websocket_refuses_bad_credentials_in_band(world: World, case: str) -> None:
    token = _bad_credential(world, case).get("Authorization", "Bearer ")[len("Bearer ") :]
    answers = await _ws(world, [{"action": "authenticate", "token": token}, {"action": "ping"}])
    assert answers[0]["requires_auth"] is True
    assert answers[1]["event"] == "auth_error"
    assert answers[2]["event"] == "auth_error"  # still not authenticated: nothing served


@pytest.mark.parametrize("how", ["in-band", "header"])
@pytest.mark.parametrize("who", ["owner", "operator"])
async def test_websocket_serves_a_valid_jwt_or_the_key(world: World, how: str, who: str) -> None:
    token = mint("alice") if who == "owner" else KEY
    run_id = world.runs["alice", "workflows"]
    reconnect = {"action": "reconnect", "run_id": run_id, "workflow_id": "flow"}
    start = {"action": "start-workflow", "workflow_id": "flow", "message": "hi"}
    if how == "in-band":
        answers = await _ws(world, [{"action": "authenticate", "token": token}, reconnect, start])
        assert answers[0]["requires_auth"] is True
        assert answers.pop(1)["event"] == "authenticated"
    else:
        answers = await _ws(world, [reconnect, start], header=token)
        assert answers[0]["requires_auth"] is False
    assert answers[1]["run_id"] == run_id and answers[1]["event"] != "error"
    assert answers[2]["event"] == "RunStarted"


async def test_websocket_header_with_a_bad_jwt_is_refused_at_the_handshake(world: World) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        await _ws(world, [], header=mint(exp_in=-60))
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("action", "needed"), [("start-workflow", "runs:write"), ("reconnect", "runs:read")]
)
async def test_websocket_actions_need_their_scope(world: World, action: str, needed: str) -> None:
    others = tuple(s for s in RUN_SCOPES if s != needed)
    frame = {"action": action, "workflow_id": "flow", "message": "hi"}
    frame["run_id"] = world.runs["alice", "workflows"] if action == "reconnect" else None
    frame = {k: v for k, v in frame.items() if v is not None}
    answers = await _ws(world, [frame], header=mint("alice", others))
    assert answers[1]["event"] == "error" and answers[1]["code"] == "insufficient_scope"
    assert needed in answers[1]["error"]


async def test_websocket_user_b_cannot_follow_or_impersonate_user_a(world: World) -> None:
    run_id = world.runs["alice", "workflows"]
    answers = await _ws(
        world,
        [
            {"action": "reconnect", "run_id": run_id, "workflow_id": "flow"},
            {"action": "reconnect", "run_id": run_id, "last_event_index": 10_000},
            {"action": "start-workflow", "workflow_id": "flow", "message": "x", "user_id": "alice"},
        ],
        header=mint("bob"),
    )
    assert [a.get("code") for a in answers[1:]] == [
        "run_not_found",
        "run_not_found",
        "not_authorized",
    ]


async def test_websocket_holds_the_jwt_expiry_and_renews_with_a_fresh_token(world: World) -> None:
    start = {"action": "start-workflow", "workflow_id": "flow", "message": "hi"}
    short = mint("alice", exp_in=1.5)
    renew = {"action": "authenticate", "token": mint("alice")}
    other = {"action": "authenticate", "token": mint("bob")}
    async with connect(world.ws_url, open_timeout=10) as ws:
        await ws.recv()  # greeting

        async def answer(frame: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps(frame))
            while True:
                got: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if got.get("event") in ("authenticated", "auth_error", "error", "RunStarted"):
                    return got

        assert (await answer({"action": "authenticate", "token": short}))["event"] == (
            "authenticated"
        )
        assert (await answer(start))["event"] == "RunStarted"
        await asyncio.sleep(2.1)  # past exp
        expired = await answer(start)
        assert (expired["event"], expired["code"]) == ("error", "token_expired")
        refused = await answer(other)
        assert (refused["event"], refused["code"]) == ("auth_error", "not_authorized")
        assert (await answer(renew))["event"] == "authenticated"
        assert (await answer(start))["event"] == "RunStarted"


# -- JWKS rotation -----------------------------------------------------------------------------


def test_jwks_rotation_is_picked_up_on_an_unknown_kid(tmp_path: Path) -> None:
    keys = _Keys()
    for kid in ("old", "new", "never"):
        keys.add(kid)
    keys.published = ["old"]
    jwks_server = ThreadServer(_jwks_app(keys))
    jwks_server.start()
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
        instance_id="rotation",
        jwt_jwks_url=f"{jwks_server.url}/jwks.json",
        jwks_refresh_min_interval=0.3,
    )
    server = ThreadServer(apps.build(settings).app)
    server.start()

    def token(kid: str) -> dict[str, str]:
        claims = {"sub": "alice", "scope": "runs:read", "exp": int(time.time()) + 60}
        return bearer(
            jwt.encode(claims, keys.private[kid], algorithm="ES256", headers={"kid": kid})
        )

    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/agents/echo/runs", headers=token("old")).status_code == 200
            assert keys.fetches == 1
            # Rotation: the provider publishes a new key and retires the old one.
            keys.published = ["new"]
            assert http.get("/agents/echo/runs", headers=token("old")).status_code == 200  # cached
            time.sleep(0.35)
            assert http.get("/agents/echo/runs", headers=token("new")).status_code == 200
            assert keys.fetches == 2
            # A flood of unknown kids costs at most one fetch per refresh interval.
            for _ in range(20):
                assert http.get("/agents/echo/runs", headers=token("never")).status_code == 401
            assert keys.fetches <= 3
            # The old key is gone from the cache once the JWKS no longer has it.
            time.sleep(0.35)
            assert http.get("/agents/echo/runs", headers=token("old")).status_code == 401
    finally:
        server.stop()
        jwks_server.stop()


def test_jwks_unreachable_is_503_not_a_crash(tmp_path: Path) -> None:
    from tests.servers import free_port

    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
        instance_id="nojwks",
        jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json",
        jwks_timeout=2,
    )
    server = ThreadServer(apps.build(settings).app)
    server.start()
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        claims = {"sub": "alice", "scope": "runs:read", "exp": int(time.time()) + 60}
        token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "x"})
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.get("/agents/echo/runs", headers=bearer(token))
        assert (answer.status_code, answer.json()["code"]) == (503, "auth_unavailable")
    finally:
        server.stop()


# -- property: nothing of A's ever reaches B ---------------------------------------------------

_B_REQUESTS = st.sampled_from(
    [
        ("GET", "/agents/echo/runs", None),
        ("GET", "/workflows/flow/runs", None),
        ("GET", "/agents/echo/runs/{a}", None),
        ("GET", "/agents/echo/runs/{a}/resume", None),
        ("POST", "/agents/echo/runs/{a}/resume", {}),
        ("POST", "/agents/echo/runs/{a}/cancel", {}),
        ("GET", "/workflows/flow/runs/{wa}", None),
        ("GET", "/workflows/flow/runs/{wa}/resume", None),
        ("POST", "/agents/echo/runs", {"message": "x", "stream": "false"}),
        ("POST", "/agents/echo/runs", {"message": "x", "stream": "true"}),
    ]
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    request=_B_REQUESTS,
    params=st.dictionaries(
        st.sampled_from(["user_id", "session_id", "status", "limit", "last_event_index", "token"]),
        st.one_of(
            st.sampled_from(["alice", "bob", "-1", "0", "5", "completed"]), st.text(max_size=8)
        ),
        max_size=3,
    ),
    scopes=st.sets(st.sampled_from([*RUN_SCOPES, "sessions:read", "tasks:read"])),
)
def test_no_response_to_user_b_contains_user_as_run_ids(
    world: World, request: tuple[str, str, dict[str, str] | None], params: dict[str, str],
    scopes: set[str],
) -> None:  # fmt: skip
    method, path, data = request
    alices = {world.runs["alice", "agents"], world.runs["alice", "workflows"]}
    path = path.format(a=world.runs["alice", "agents"], wa=world.runs["alice", "workflows"])
    params = {k: v.replace("\x00", "") for k, v in params.items()}
    if data is not None:
        data = {**data, **params}
    with httpx.Client(base_url=world.url, timeout=30) as http:
        answer = http.request(
            method, path, params=params if data is None else None, data=data,
            headers=bearer(mint("bob", tuple(sorted(scopes)))),
        )  # fmt: skip
    body = answer.text + "".join(answer.headers.values())
    for run_id in alices:
        assert run_id not in body, (method, path, params, answer.status_code)


def test_the_readme_token_minting_example_works(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    match = re.search(r"TOKEN=\$\(python -c '([^']+)'\)", readme)
    assert match is not None, "README: the minting example is gone"
    minted = subprocess.run(
        [sys.executable, "-c", match.group(1)], capture_output=True, text=True, check=True
    ).stdout.strip()
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
        instance_id="readme",
        demo_delay=0.0,
        jwt_secret="change-me-to-32-or-more-random-bytes",
    )
    server = ThreadServer(apps.build(settings).app)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            data = {"message": "hi", "stream": "false"}
            run = http.post("/agents/echo/runs", data=data, headers=bearer(minted))
            assert run.status_code == 200 and run.json()["user_id"] == "alice"
            assert http.post("/agents/echo/runs", data=data).status_code == 401
    finally:
        server.stop()


def test_a_resume_token_of_any_text_is_refused_not_a_500(world: World) -> None:
    run_id = world.runs["alice", "agents"]
    with httpx.Client(base_url=world.url, timeout=30) as http:
        for token in ("9999999999.é", "9999999999.\u2028.x", "1.2.3", "é" * 50):
            answer = http.get(f"/agents/echo/runs/{run_id}/resume", params={"token": token})
            assert answer.status_code == 401, (token, answer.text)


async def test_a_token_for_another_audience_is_refused_when_none_is_configured() -> None:
    authenticator = Authenticator(Settings(jwt_secret=SECRET).auth)
    ours = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert (await authenticator.authenticate(ours)).user_id == "alice"
    theirs = mint("alice", aud="another-service")
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(theirs)
