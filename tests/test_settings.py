from __future__ import annotations

import pytest

from agentos import Settings


def test_defaults_documented_in_protocol() -> None:
    s = Settings()
    assert s.buffer_ttl == 1800 and s.ping_interval == 15 and s.max_body_bytes == 10 * 1024 * 1024
    assert s.db_url.startswith("sqlite+aiosqlite")
    assert s.lease_ttl <= 30


def test_from_env_reads_prefixed_variables() -> None:
    env = {
        "AGENTOS_BUFFER_TTL": "60",
        "AGENTOS_MAX_BATCH_EVENTS": "5",
        "AGENTOS_SECURITY_KEY": "k",
        "OTHER": "1",
    }
    s = Settings.from_env(env)
    assert s.buffer_ttl == 60.0 and s.max_batch_events == 5 and s.security_key == "k"
    assert Settings.from_env(env, buffer_ttl=1.0).buffer_ttl == 1.0


def test_bad_values_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="AGENTOS_BUFFER_TTL"):
        Settings.from_env({"AGENTOS_BUFFER_TTL": "soon"})
    with pytest.raises(ValueError, match="ping_interval"):
        Settings(ping_interval=-1)


def test_empty_security_key_means_none() -> None:
    assert Settings.from_env({"AGENTOS_SECURITY_KEY": ""}).security_key is None


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().buffer_ttl = 3  # type: ignore[misc]
