from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentos import AgentOS, Settings
from agentos.demo import demo_os
from agentos.http.auth import sign_resume_token, verify_resume_token

KEY = "s3cret-key"
NOW = 1_763_700_000.0


def test_round_trip() -> None:
    token = sign_resume_token(KEY, "run-1", ttl=3600, now=NOW)
    assert verify_resume_token(KEY, "run-1", token, now=NOW)
    assert verify_resume_token(KEY, "run-1", token, now=NOW + 3599)


def test_shape_is_expiry_dot_urlsafe_signature() -> None:
    token = sign_resume_token(KEY, "run-1", ttl=60, now=NOW)
    expiry, signature = token.split(".")
    assert int(expiry) == int(NOW + 60)
    assert len(signature) == 43  # 32 bytes, base64url without padding
    assert set(signature) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert KEY not in token


def test_expired_token_is_refused() -> None:
    token = sign_resume_token(KEY, "run-1", ttl=10, now=NOW)
    assert not verify_resume_token(KEY, "run-1", token, now=NOW + 10)
    assert not verify_resume_token(KEY, "run-1", token, now=NOW + 1000)


def test_token_is_scoped_to_one_run() -> None:
    token = sign_resume_token(KEY, "run-1", ttl=60, now=NOW)
    assert not verify_resume_token(KEY, "run-2", token, now=NOW)


def test_other_key_is_refused() -> None:
    token = sign_resume_token(KEY, "run-1", ttl=60, now=NOW)
    assert not verify_resume_token("other-key", "run-1", token, now=NOW)


def test_extending_the_expiry_breaks_the_signature() -> None:
    token = sign_resume_token(KEY, "run-1", ttl=60, now=NOW)
    expiry, signature = token.split(".")
    forged = f"{int(expiry) + 3600}.{signature}"
    assert not verify_resume_token(KEY, "run-1", forged, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "123",
        "123.",
        ".sig",
        "-5.abc",
        "\uff11\uff12\uff13.abc",
        "x" * 500,
        "1e12.abc",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert not verify_resume_token(KEY, "run-1", token, now=NOW)


def test_empty_key_never_verifies_and_cannot_sign() -> None:
    with pytest.raises(ValueError):
        sign_resume_token("", "run-1", ttl=60, now=NOW)
    assert not verify_resume_token("", "run-1", "9999999999.abc", now=NOW)


def test_non_positive_ttl_is_rejected() -> None:
    with pytest.raises(ValueError):
        sign_resume_token(KEY, "run-1", ttl=0, now=NOW)


# -- wired into the app: the token stands in for the key on one route of one run -------------

SERVER_KEY = "server-key"


def _secured(serve: Callable[[AgentOS], str], settings: Settings, **changes: Any) -> str:
    return serve(demo_os(settings.replace(security_key=SERVER_KEY, **changes)))


def _create(url: str) -> httpx.Response:
    response = httpx.post(
        f"{url}/agents/echo/runs",
        data={"message": "a b", "stream": "false", "background": "true"},
        headers={"Authorization": f"Bearer {SERVER_KEY}"},
        timeout=10,
    )
    assert response.status_code == 202
    return response


def test_create_returns_a_token_that_opens_only_that_runs_resume(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    url = _secured(serve, settings)
    created = _create(url)
    run_id = created.json()["run_id"]
    token = created.json()["resume_token"]
    assert created.headers["x-resume-token"] == token
    assert SERVER_KEY not in token
    run_url = f"{url}/agents/echo/runs/{run_id}"
    resumed = httpx.get(f"{run_url}/resume", params={"token": token}, timeout=10)
    assert resumed.status_code == 200
    assert "event: RunCompleted" in resumed.text
    assert httpx.get(f"{run_url}/resume", timeout=10).status_code == 401
    assert httpx.get(run_url, params={"token": token}, timeout=10).status_code == 401
    posted = httpx.post(f"{run_url}/resume", params={"token": token}, timeout=10)
    assert posted.status_code == 401
    other = _create(url).json()
    other_url = f"{url}/agents/echo/runs/{other['run_id']}/resume"
    assert httpx.get(other_url, params={"token": token}, timeout=10).status_code == 401
    # The page and the module are public.
    assert httpx.get(f"{url}/", timeout=10).status_code == 200
    script = httpx.get(f"{url}/static/agentos.js", timeout=10)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")


def test_expired_token_is_refused_by_the_app(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    url = _secured(serve, settings, resume_token_ttl=1.0)
    created = _create(url).json()
    expiry = int(created["resume_token"].split(".")[0])
    time.sleep(max(0.0, expiry - time.time()) + 0.05)
    resume = f"{url}/agents/echo/runs/{created['run_id']}/resume"
    assert (
        httpx.get(resume, params={"token": created["resume_token"]}, timeout=10).status_code == 401
    )


def test_no_token_without_a_key_or_with_ttl_zero(
    serve: Callable[[AgentOS], str], settings: Settings, tmp_path: Path
) -> None:
    # Two servers, so two databases and instance ids: they must not recover each other's runs.
    open_settings = settings.replace(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'open.db'}", instance_id="open"
    )
    open_url = serve(demo_os(open_settings))
    body = {"message": "a", "stream": "false", "background": "true"}
    response = httpx.post(f"{open_url}/agents/echo/runs", data=body, timeout=10)
    assert "x-resume-token" not in response.headers
    assert "resume_token" not in response.json()
    url = _secured(serve, settings, resume_token_ttl=0.0)
    created = _create(url)
    assert "x-resume-token" not in created.headers
    assert "resume_token" not in created.json()
