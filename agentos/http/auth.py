"""Who may call: the security key, bearer JWTs, scopes, and run-scoped resume tokens.

Every request is made by a :class:`Principal`, resolved once by the security middleware
(:class:`Authenticator`, from the ``Authorization`` header or a resume token) and kept in the
ASGI scope's state; a route asks for it with the scope it needs::

    caller = authorize(request.scope, "runs:read")        # 401/403 (MissingScope) if not
    record = await manager.get_run(run_id, owner=caller.owner)  # 404 for others' runs

Credentials (PROTOCOL.md, "Users and scopes"):

- the operator's security key (``Authorization: Bearer <key>``): every scope, every user's objects;
- a JWT (``Authorization: Bearer <jwt>``), verified with PyJWT: HS256 with ``jwt_secret``, or
  RS256/ES256 with ``jwt_public_key`` or a JWKS (``jwt_jwks_url``/``jwt_jwks_file``; cached, and
  fetched again on an unknown ``kid``, at most once per ``jwks_refresh_min_interval``). ``exp`` and
  ``sub`` are required; ``nbf``, ``iss`` and ``aud`` are checked. The user is ``sub``, the
  scopes come from ``scope`` (space-separated) or ``scopes`` (a list);
- with neither configured the server is open: every caller is the operator.

Resume tokens are for clients that cannot send an ``Authorization`` header.

A browser ``EventSource`` sends no custom headers, so when authentication is on the
``GET .../runs/{run_id}/resume`` route also accepts ``?token=<resume token>``. The token is
minted when the run is created and only opens that run's event stream, for the run's user, until
it expires; it never grants anything else, and it never contains a secret.

Shape: ``<expiry>.<signature>`` for a run with no user, ``<expiry>.<user>.<signature>`` for a
run of a user, where ``expiry`` is a Unix time in whole seconds, ``user`` the unpadded base64url
UTF-8 of the user id, and ``signature`` the unpadded base64url HMAC-SHA256, keyed with the
resume-token key (``resume_token_secret``, else the security key), over
``agentos-resume-v2 NUL run_id NUL user_id NUL expiry`` (an empty user id for none). The prefix
keeps a signature made here from being valid for any other use of the same key.

The token functions are pure: the caller passes the clock, which keeps them trivial to test.

    token = sign_resume_token(key, run_id, ttl=3600, now=time.time(), user_id="alice")
    assert verify_resume_token(key, run_id, token, now=time.time())

A token in a URL would land in the access log: :func:`redact_tokens_in_logs` (installed by the
app) rewrites every ``token=`` query value in uvicorn's log records to ``[redacted]``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import httpx
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.datastructures import Headers
from starlette.types import Scope

from agentos.errors import (
    AuthUnavailable,
    InvalidRequest,
    InvalidToken,
    MissingScope,
    NotAuthenticated,
    NotAuthorized,
)
from agentos.records import MAX_ID_LENGTH, check_text
from agentos.settings import AuthSettings

__all__ = [
    "SCOPES",
    "Authenticator",
    "JWTVerifier",
    "Principal",
    "authorize",
    "bearer_token",
    "key_matches",
    "principal_of",
    "redact_tokens_in_logs",
    "resume_principal",
    "set_principal",
    "sign_resume_token",
    "verify_resume_token",
]

logger = logging.getLogger("agentos.auth")

#: Every scope a credential can grant. ``sessions:*`` and ``tasks:*`` are reserved for the
#: routes that will serve sessions and tasks; ``admin`` widens what a caller sees to every
#: user's objects (it grants no action by itself).
SCOPES = (
    "runs:read",
    "runs:write",
    "runs:cancel",
    "sessions:read",
    "sessions:write",
    "tasks:read",
    "tasks:write",
    "admin",
)
_ALL_SCOPES = frozenset(SCOPES)

_PURPOSE = b"agentos-resume-v2"
# A token with the longest user id is about 1,100 characters; refusing anything much longer
# keeps the work bounded.
_MAX_TOKEN_LENGTH = 1200
# Bigger bearer JWTs are refused before any parsing.
_MAX_JWT_LENGTH = 16 * 1024
# A name=value pair of a query string inside a log line (the access log's path, a WebSocket's URL).
_QUERY_PAIR = re.compile(r"(?<=[?&])([^=&#\s\"]*)=([^&#\s\"]*)")
# uvicorn logs each request's path and query to uvicorn.access, and each WebSocket's to
# uvicorn.error.
_URL_LOGGERS = ("uvicorn.access", "uvicorn.error")
_HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_STATE_KEY = "agentos.principal"


# -- who is calling --------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the operator, or a user with scopes.

    ``user_id`` is the JWT's ``sub`` (None for the operator, and for a resume token of a run
    that has no user); ``run_id`` is set for a resume token, which opens that one run only.
    """

    user_id: str | None
    scopes: frozenset[str]
    operator: bool = False
    run_id: str | None = None
    #: When the credential expires (a JWT's ``exp``, Unix time); None: it does not.
    expires_at: float | None = None

    def expired(self, now: float) -> bool:
        """Whether the credential has expired (a long-lived WebSocket checks at each action)."""
        return self.expires_at is not None and now >= self.expires_at

    @classmethod
    def operator_key(cls) -> Principal:
        """The security key's holder (or anyone, on an open server): every scope, every user."""
        return cls(user_id=None, scopes=_ALL_SCOPES, operator=True)

    @property
    def sees_all(self) -> bool:
        """Whether this caller sees every user's objects (the operator, or scope ``admin``)."""
        return self.operator or "admin" in self.scopes

    @property
    def owner(self) -> str | None:
        """The user whose objects alone this caller may see; None: no such limit."""
        return None if self.sees_all else self.user_id

    def require(self, scope: str) -> Principal:
        """This principal, or MissingScope (403) when it lacks ``scope``."""
        if not self.operator and scope not in self.scopes:
            raise MissingScope(scope)
        return self

    def may_see(self, user_id: str | None) -> bool:
        """Whether an object of ``user_id`` is visible to this caller."""
        return self.sees_all or user_id == self.user_id

    def user_for_new(self, given: str | None) -> str | None:
        """The user of an object this caller creates, from the request's ``user_id`` field.

        The operator may name any user (or none); a JWT's user owns what it creates and may
        repeat its own id, never another (403).
        """
        if self.operator:
            return given
        if given is not None and given != self.user_id:
            raise NotAuthorized("user_id must be the token's own subject (sub), or left out")
        return self.user_id


def authorize(scope: Scope, needed: str) -> Principal:
    """The request's principal (set by the security middleware), checked for ``needed``.

    Each route calls it once with the scope it needs, then passes ``.owner`` down to the lookups
    so that other users' objects are not found (404, never 403: existence does not leak).
    """
    principal = principal_of(scope)
    if principal is None:
        raise NotAuthenticated("no credential was checked for this request")
    return principal.require(needed)


def principal_of(scope: Scope) -> Principal | None:
    """The principal the security middleware found for this request, if any."""
    principal = scope.get("state", {}).get(_STATE_KEY)
    return principal if isinstance(principal, Principal) else None


def set_principal(scope: Scope, principal: Principal) -> None:
    """Record who makes this request (the security middleware does, before any route)."""
    scope.setdefault("state", {})[_STATE_KEY] = principal


# -- the operator's key ------------------------------------------------------------------------


def key_matches(presented: object, key: str) -> bool:
    """Whether ``presented`` is the security key (compared in constant time)."""
    return isinstance(presented, str) and hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), key.encode()
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


# -- everything together ---------------------------------------------------------------------


class Authenticator:
    """Turns a credential into a :class:`Principal`; built once per app from ``AuthSettings``.

    Example::

        authenticator = Authenticator(settings.auth)
        principal = await authenticator.authenticate(bearer)   # 401/403 errors, or a Principal
    """

    def __init__(self, settings: AuthSettings) -> None:
        self.key = settings.security_key
        self.jwt = JWTVerifier(settings) if settings.jwt_enabled else None
        self.enabled = settings.enabled
        self.resume_key = settings.resume_token_secret or settings.security_key
        self.resume_ttl = settings.resume_token_ttl

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal of a bearer credential (the key or a JWT); None: none was sent."""
        if not self.enabled:
            return Principal.operator_key()
        if credential is None:
            what = "security key" if self.jwt is None else "JWT"
            raise NotAuthenticated(f"this server needs Authorization: Bearer <{what}>")
        if self.key is not None and key_matches(credential, self.key):
            return Principal.operator_key()
        if self.jwt is None:
            raise NotAuthorized("the security key is not valid")
        return await self.jwt.verify(credential)

    async def from_request(self, scope: Scope) -> Principal:
        """The principal of an HTTP request or WebSocket upgrade: its header, or a resume token.

        A resume token stands in for a missing or refused header on ``GET .../resume`` only.
        """
        authorization = Headers(scope=scope).get("authorization")
        credential = None if authorization is None else bearer_token(authorization) or ""
        try:
            return await self.authenticate(credential)
        except (NotAuthenticated, NotAuthorized):
            grant = self._resume_grant(scope)
            if grant is None:
                raise
            return grant

    def resume_token(self, run_id: str, user_id: str | None) -> str | None:
        """A token that opens ``GET .../runs/{run_id}/resume`` for ``user_id`` (EventSource)."""
        if not self.enabled or self.resume_key is None or self.resume_ttl <= 0:
            return None
        return sign_resume_token(
            self.resume_key, run_id, ttl=self.resume_ttl, now=time.time(), user_id=user_id
        )

    def _resume_grant(self, scope: Scope) -> Principal | None:
        """A ``GET /{kind}/{id}/runs/{run_id}/resume?token=...`` signed for that run."""
        if self.resume_key is None or scope["type"] != "http" or scope["method"] != "GET":
            return None
        parts = scope["path"].split("/")
        if len(parts) != 6 or parts[0] or parts[3] != "runs" or parts[5] != "resume":
            return None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        token = query.get("token")
        if token is None:
            return None
        return resume_principal(self.resume_key, parts[4], token, now=time.time())


# -- JWTs --------------------------------------------------------------------------------------


class JWTVerifier:
    """Verifies bearer JWTs with PyJWT and reads their user and scopes.

    Settings are checked when it is built: a secret under 32 bytes, a public key that is not
    PEM, or an algorithm list that names ``none`` or nothing usable, is a ValueError at start-up.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self.secret = settings.jwt_secret
        if self.secret is not None and len(self.secret.encode()) < 32:
            # RFC 7518 3.2: an HS256 key shorter than the hash is guessable; PyJWT warns on
            # every request. Refused once, at start-up.
            raise ValueError("setting jwt_secret must be at least 32 bytes long")
        self.public_key = _load_public_key(settings.jwt_public_key)
        self.jwks: _JWKS | None = None
        if settings.jwt_jwks_url or settings.jwt_jwks_file:
            self.jwks = _JWKS(settings)
        named = [a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()]
        if any(a.lower() == "none" for a in named):
            raise ValueError("setting jwt_algorithms must not allow 'none'")
        asymmetric = self.public_key is not None or self.jwks is not None
        default = [*(["HS256"] if self.secret else []), *(["RS256", "ES256"] if asymmetric else [])]
        self.algorithms = frozenset(named or default)
        if not self.algorithms:
            raise ValueError("setting jwt_algorithms names no algorithm")
        self.issuer = settings.jwt_issuer
        audiences = [a.strip() for a in (settings.jwt_audience or "").split(",") if a.strip()]
        self.audience = audiences or None
        self.leeway = settings.jwt_leeway

    async def verify(self, token: str) -> Principal:
        """The principal of a valid JWT; InvalidToken (401) with the reason otherwise."""
        if len(token) > _MAX_JWT_LENGTH:
            raise InvalidToken("the bearer token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the bearer token is neither the security key nor a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"the JWT algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        key = await self._key(alg, kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                # With no audience configured, a token that names one (meant for another
                # service) is refused: PyJWT's default.
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the JWT is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the JWT is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the JWT's issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the JWT has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the JWT's signature is not valid") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            # A key of the wrong type for the algorithm, a malformed payload, ...
            raise InvalidToken("the JWT is not valid") from None
        expiry = claims.get("exp")
        return Principal(
            user_id=_subject(claims),
            scopes=_scopes(claims),
            expires_at=float(expiry) if isinstance(expiry, int | float) else None,
        )

    async def _key(self, alg: str, kid: str | None) -> Any:
        if alg in _HMAC_ALGORITHMS:
            if not self.secret:
                raise InvalidToken(f"the JWT algorithm {alg!r} is not accepted")
            return self.secret
        if self.jwks is not None:
            return await self.jwks.key(kid, alg)
        if self.public_key is None:
            raise InvalidToken(f"the JWT algorithm {alg!r} is not accepted")
        return self.public_key


def _subject(claims: Mapping[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_ID_LENGTH:
        raise InvalidToken(f"the JWT's sub must be a string of 1 to {MAX_ID_LENGTH} characters")
    try:
        return check_text("sub", sub)
    except InvalidRequest:
        raise InvalidToken("the JWT's sub is not text") from None


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    granted: set[str] = set()
    for name in ("scope", "scopes"):
        value = claims.get(name)
        items: Iterable[object] = value.split() if isinstance(value, str) else ()
        if isinstance(value, list):
            items = value
        granted.update(s for s in items if isinstance(s, str))
    return frozenset(granted & _ALL_SCOPES)


def _load_public_key(value: str | None) -> Any:
    if not value:
        return None
    text = value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()
    return load_pem_public_key(text.encode())


class _JWKS:
    """A JWKS document's keys by ``kid``: loaded on first use, again on an unknown ``kid``.

    Reloads are at least ``jwks_refresh_min_interval`` apart (a flood of made-up ``kid`` values
    costs one fetch per interval) and one at a time; a failed reload keeps the keys it had.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self.url = settings.jwt_jwks_url
        self.path = settings.jwt_jwks_file
        self.min_interval = settings.jwks_refresh_min_interval
        self.timeout = settings.jwks_timeout
        self.max_bytes = settings.jwks_max_bytes
        self.keys: dict[str | None, tuple[Any, str | None]] = {}
        self.loaded_at: float | None = None
        self.fetches = 0
        self._lock: asyncio.Lock | None = None

    async def key(self, kid: str | None, alg: str) -> Any:
        found = self._find(kid)
        if found is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                found = self._find(kid)
                recent = (
                    self.loaded_at is not None
                    and time.monotonic() - self.loaded_at < self.min_interval
                )
                if found is None and not recent:
                    await self._reload()
                    found = self._find(kid)
        if found is None:
            raise InvalidToken(f"no signing key with kid {kid!r}")
        key, declared = found
        if declared is not None and declared != alg:
            raise InvalidToken(f"the key {kid!r} is not for {alg}")
        return key

    def _find(self, kid: str | None) -> tuple[Any, str | None] | None:
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(kid)

    async def _reload(self) -> None:
        self.loaded_at = time.monotonic()
        self.fetches += 1
        try:
            document = await self._read()
            keys = _parse_jwks(document)
        except (OSError, httpx.HTTPError, TimeoutError, ValueError) as exc:
            logger.warning("the JWKS could not be loaded: %s", type(exc).__name__)
            if not self.keys:
                raise AuthUnavailable("the JWT signing keys cannot be loaded now") from None
            return
        self.keys = keys

    async def _read(self) -> bytes:
        if self.path is not None:
            data = await asyncio.to_thread(Path(self.path).read_bytes)
            if len(data) > self.max_bytes:
                raise ValueError("the JWKS document is too large")
            return data
        assert self.url is not None
        body = bytearray()
        async with asyncio.timeout(self.timeout):
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                async with client.stream("GET", self.url) as response:
                    response.raise_for_status()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise ValueError("the JWKS document is too large")
        return bytes(body)


def _parse_jwks(document: bytes) -> dict[str | None, tuple[Any, str | None]]:
    """Each signing key of a JWKS document by ``kid``, with the algorithm it declares if any.

    Keys for encryption, and keys this server cannot use, are left out.
    """
    data = json.loads(document)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("a JWKS document is an object with a list of keys")
    keys: dict[str | None, tuple[Any, str | None]] = {}
    for item in data["keys"]:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(item)
        except jwt.PyJWTError:
            continue  # a key type or curve this server cannot use
        declared = item.get("alg")
        keys[key.key_id] = (key.key, declared if isinstance(declared, str) else None)
    return keys


# -- resume tokens -----------------------------------------------------------------------------


def _signature(key: str, run_id: str, user_id: str | None, expiry: int) -> str:
    user = (user_id or "").encode("utf-8", "surrogatepass")
    message = b"\x00".join((_PURPOSE, run_id.encode(), user, str(expiry).encode()))
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return _b64(digest)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_resume_token(
    key: str, run_id: str, ttl: float, now: float, user_id: str | None = None
) -> str:
    """Return a token that lets ``user_id`` resume ``run_id`` until ``now + ttl``."""
    if not key:
        raise ValueError("a resume token needs a non-empty key")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    expiry = int(now + ttl)
    signature = _signature(key, run_id, user_id, expiry)
    if user_id:
        return f"{expiry}.{_b64(user_id.encode('utf-8', 'surrogatepass'))}.{signature}"
    return f"{expiry}.{signature}"


def resume_principal(key: str, run_id: str, token: str, now: float) -> Principal | None:
    """Who ``token`` lets resume ``run_id`` (its user, only that run), or None if it is not valid."""
    if not key or not token or len(token) > _MAX_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) == 2:
        (expiry_text, signature), user_id = parts, None
    elif len(parts) == 3:
        expiry_text, user_text, signature = parts
        try:
            padded = user_text + "=" * (-len(user_text) % 4)
            user_id = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        except (ValueError, binascii.Error):  # UnicodeError is a ValueError
            return None
        if not user_id:
            return None
    else:
        return None
    if not expiry_text.isascii() or not expiry_text.isdigit():
        return None
    expiry = int(expiry_text)
    if now >= expiry:
        return None
    expected = _signature(key, run_id, user_id, expiry)
    if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), expected.encode()):
        return None
    return Principal(user_id=user_id, scopes=frozenset({"runs:read"}), run_id=run_id)


def verify_resume_token(key: str, run_id: str, token: str, now: float) -> bool:
    """Tell whether ``token`` was signed with ``key`` for ``run_id`` and is not yet expired."""
    return resume_principal(key, run_id, token, now) is not None


def redact_tokens_in_logs() -> None:
    """Make uvicorn's loggers write ``token=[redacted]`` for any ``token=`` query value.

    A filter on the logger (not on a handler) sees every record before any handler, including
    handlers configured later; ``logging.config.dictConfig`` (uvicorn's ``--log-config``) keeps a
    logger's filters. Idempotent: the app calls it when built and again at start-up.
    """
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())


class _RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access formatter unpacks the arguments by position: keep their shape.
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: _redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        elif not record.args and isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        return True


def _redact(text: str) -> str:
    if "=" not in text:
        return text
    return _QUERY_PAIR.sub(_redact_pair, text)


def _redact_pair(match: re.Match[str]) -> str:
    name = match.group(1)
    if unquote_plus(name).strip().lower() != "token":
        return match.group(0)
    return f"{name}=[redacted]"
