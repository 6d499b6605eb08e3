from __future__ import annotations

import pytest

from agentos.tokens import sign_resume_token, verify_resume_token

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
