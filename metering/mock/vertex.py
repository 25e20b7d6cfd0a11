"""Vertex AI in the mock: Google's OAuth2 token endpoint, the Bearer tokens it issued, and
Claude's `:rawPredict` / `:streamRawPredict` bodies (Gemini's Vertex paths are the Gemini
API's answers: `.../publishers/google/models/{model}:generateContent`).

The token endpoint takes the JWT-bearer grant google-auth's service-account credentials
send (`POST /token`, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and
`assertion`): the assertion must be an RS256 JWT signed by a key registered for its issuer
(`POST /_mock/google/keys` with `client_email`, `public_key` as PEM, and optionally
`expires_in`), and the answer is an access token the Vertex paths then accept until it expires.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

TOKEN_PATH = "/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
VERTEX_VERSION = "vertex-2023-10-16"
DEFAULT_EXPIRES_IN = 3600


class GrantRefused(Exception):
    """The token request is refused: `error` is OAuth2's code, the message says why."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


@dataclass
class GoogleAuth:
    """The mock's registered service accounts and the tokens it issued."""

    keys: dict[str, tuple[str, int]] = field(default_factory=dict)  # email -> (PEM, expires_in)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (email, until)
    grants: dict[str, int] = field(default_factory=dict)  # email -> tokens issued

    def register(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise GrantRefused("invalid_request", "a JSON object is expected")
        email, pem = body.get("client_email"), body.get("public_key")
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN)
        if (
            not isinstance(email, str)
            or not isinstance(pem, str)
            or not isinstance(expires_in, int)
        ):
            raise GrantRefused("invalid_request", "client_email, public_key (PEM), expires_in")
        self.keys[email] = (pem, expires_in)

    def grant(self, form: bytes) -> bytes:
        """The token endpoint's answer to a JWT-bearer grant, or GrantRefused."""
        from google.auth import exceptions, jwt

        fields = urllib.parse.parse_qs(form.decode("utf-8", "replace"))
        if fields.get("grant_type") != [JWT_BEARER] or len(fields.get("assertion", [])) != 1:
            raise GrantRefused("unsupported_grant_type", "Only the JWT-bearer grant is served.")
        assertion = fields["assertion"][0]
        try:
            header = jwt.decode_header(assertion)
            claims = jwt.decode(assertion, verify=False)
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise GrantRefused("invalid_grant", f"Not a JWT: {exc}") from None
        if header.get("alg") != "RS256":
            raise GrantRefused("invalid_grant", "The assertion must be signed with RS256.")
        email = claims.get("iss")
        if email not in self.keys:
            raise GrantRefused("invalid_grant", "Unknown service account.")
        pem, expires_in = self.keys[email]
        try:
            jwt.decode(assertion, certs=pem, verify=True)  # signature, iat and exp
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise GrantRefused("invalid_grant", f"Invalid JWT signature: {exc}") from None
        if not claims.get("scope"):
            raise GrantRefused("invalid_scope", "The assertion names no scope.")
        token = "ya29.mock-" + secrets.token_urlsafe(24)
        self.tokens[token] = (email, time.time() + expires_in)
        self.grants[email] = self.grants.get(email, 0) + 1
        answer = {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}
        return json.dumps(answer).encode()

    def accepts(self, headers: dict[str, str]) -> bool:
        """Whether the request carries a Bearer token this mock issued and still honours."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() != "bearer ":
            return False
        issued = self.tokens.get(auth[7:])
        return issued is not None and issued[1] > time.time()

    def as_dict(self) -> dict[str, Any]:
        return {"grants": dict(self.grants), "tokens": len(self.tokens)}


def is_vertex(path: str) -> bool:
    return "/projects/" in path and "/publishers/" in path


def anthropic_call(path: str) -> tuple[str, bool] | None:
    """(model, stream) of a Vertex path `.../publishers/anthropic/models/{model}:rawPredict`
    (or `:streamRawPredict`)."""
    head, sep, method = path.rpartition(":")
    if not sep or method not in ("rawPredict", "streamRawPredict"):
        return None
    if "/publishers/anthropic/models/" not in head:
        return None
    model = urllib.parse.unquote(head.rpartition("/models/")[2])
    return model, method == "streamRawPredict"


COUNT_TOKENS = "count-tokens"  # `.../publishers/anthropic/models/count-tokens:rawPredict`


def gemini_count_body(body: bytes) -> bytes:
    """Vertex's Gemini CountTokensRequest (the generate request's fields at its top level) as
    the Gemini API's `generateContentRequest` form, so the system instruction and tools count."""
    try:
        data = json.loads(body)
    except ValueError:
        return body  # refused as the Gemini API refuses it
    if not isinstance(data, dict) or "generateContentRequest" in data:
        return body
    return json.dumps({"generateContentRequest": data}).encode()


def count_body(body: bytes) -> bytes:
    """A Vertex count-tokens body (the model in it, and Vertex's `anthropic_version`) as the
    Messages count body, or ValueError."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("The body is not JSON.") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise ValueError("model: Field required (count-tokens names the model in the body).")
    if data.pop("anthropic_version", None) != VERTEX_VERSION:
        raise ValueError(f"anthropic_version: must be {VERTEX_VERSION!r}.")
    return json.dumps(data).encode()


def messages_body(body: bytes, model: str, stream: bool) -> bytes:
    """A Vertex Claude body as the Messages API body it stands for (`model` put back), or
    ValueError naming what Vertex would refuse: a `model` in the body, a missing or other
    `anthropic_version`, or a `stream` that disagrees with the URL's method."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("The body is not JSON.") from None
    if not isinstance(data, dict):
        raise ValueError("The body is not a JSON object.")
    if "model" in data:
        raise ValueError("model: Extra inputs are not permitted (the model is in the URL).")
    if data.pop("anthropic_version", None) != VERTEX_VERSION:
        raise ValueError(f"anthropic_version: must be {VERTEX_VERSION!r}.")
    if bool(data.get("stream", False)) is not stream:
        raise ValueError("stream: must match the method (:streamRawPredict streams).")
    return json.dumps({"model": model, **data}).encode()
