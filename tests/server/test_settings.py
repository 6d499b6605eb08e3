from __future__ import annotations

import re

import pytest

from agentos import Settings
from tests.servers import ROOT

README = ROOT / "README.md"


def test_defaults_documented_in_protocol() -> None:
    s = Settings()
    assert s.buffer.ttl == 1800 and s.streams.ping_interval == 15
    assert s.http.max_body_bytes == 10 * 1024 * 1024
    assert s.database.url.startswith("sqlite+aiosqlite")
    assert s.leases.ttl <= 30


def test_from_env_reads_prefixed_variables() -> None:
    env = {
        "AGENTOS_BUFFER_TTL": "60",
        "AGENTOS_MAX_BATCH_EVENTS": "5",
        "AGENTOS_SECURITY_KEY": "k",
        "AGENTOS_TAIL_NOTIFY": "off",
        "OTHER": "1",
    }
    s = Settings.from_env(env)
    assert s.buffer.ttl == 60.0 and s.commit.max_batch_events == 5
    assert s.auth.security_key == "k" and s.streams.tail_notify is False
    assert Settings.from_env(env, buffer_ttl=1.0).buffer.ttl == 1.0


def test_flat_names_build_sections_and_replace_copies() -> None:
    s = Settings(max_streams=3, ws_send_timeout=0.5, instance_id="a")
    assert s.streams.max_open == 3 and s.ws.send_timeout == 0.5
    t = s.replace(max_streams=4)
    assert t.streams.max_open == 4 and s.streams.max_open == 3
    assert t.ws.send_timeout == 0.5 and t.instance_id == "a"
    assert s == Settings(max_streams=3, ws_send_timeout=0.5, instance_id="a")
    assert t.values()["max_streams"] == 4


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(TypeError, match="buffer_tll"):
        Settings(buffer_tll=3)


def test_bad_values_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="AGENTOS_BUFFER_TTL"):
        Settings.from_env({"AGENTOS_BUFFER_TTL": "soon"})
    with pytest.raises(ValueError, match="ping_interval"):
        Settings(ping_interval=-1)
    with pytest.raises(ValueError, match="lease_renew_interval"):
        Settings(lease_ttl=5, lease_renew_interval=5)
    # NaN passes every comparison: a NaN linger would never end on its deadline.
    with pytest.raises(ValueError, match="commit_linger"):
        Settings.from_env({"AGENTOS_COMMIT_LINGER": "nan"})


def test_empty_security_key_means_none() -> None:
    assert Settings.from_env({"AGENTOS_SECURITY_KEY": ""}).auth.security_key is None


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.buffer = s.buffer  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.buffer.ttl = 3  # type: ignore[misc]


def test_the_key_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(Settings(security_key="s3cret"))


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"`AGENTOS_([A-Z0-9_]+)`", README.read_text()))
    missing = [name for name in Settings.names() if name.upper() not in documented]
    assert not missing, f"settings missing from README.md: {missing}"
