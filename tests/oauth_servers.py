"""OAuth2 peers for the tests: an authorization server, a Dovecot that trusts it, an SMTP sink.

- `OAuthServer`: a small HTTP server on 127.0.0.1 (http.server in a thread) playing the
  identity provider. It answers Dovecot's oauth2 passdb token introspection (RFC 7662:
  ``POST /introspect`` with ``token=...``) for the access tokens it knows, and serves a
  token endpoint for the RFC 6749 refresh_token grant (``POST /token``) that issues new
  access tokens, each valid for introspection at once. It counts the requests.
- `OAuthDovecot`: tests/servers.py's rootless Dovecot with an oauth2 passdb (for XOAUTH2
  and OAUTHBEARER) beside its passwd-file passdb (PLAIN/LOGIN, so the harness's APPEND
  helpers keep working).
- `OAuthSmtpSink`: the SMTP sink with an ``AUTH XOAUTH2`` mechanism accepting known tokens.

No pytest in here: tests/test_oauth.py wraps these in fixtures.
"""

from __future__ import annotations

import binascii
import json
import secrets
import threading
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword
from servers import HOST, Dovecot, Managed, SmtpSink

# --------------------------------------------------------------------------------------------
# The authorization server
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint, as parsed (form fields, first value each)."""

    form: dict[str, str]
    authorization: str | None


class OAuthServer(Managed):
    """Introspection and token endpoints on 127.0.0.1, in a background thread.

    ``grant(token, user)`` makes an access token valid; ``add_client(...)`` registers a
    refresh token that ``POST /token`` exchanges for fresh access tokens lasting
    ``expires_in`` seconds (each one granted to that client's user).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.access_tokens: dict[str, str] = {}  # token -> user name
        # refresh token -> (client_id, client_secret or None, user)
        self.refresh_tokens: dict[str, tuple[str, str | None, str]] = {}
        self.expires_in: int | None = 3600
        self.rotate_refresh_token = False
        # The token endpoint's next answers instead of its own: a JSON value, or raw bytes.
        self.fail_token_endpoint: tuple[int, Any] | None = None
        self.introspections: list[str] = []  # the tokens Dovecot asked about
        self.token_requests: list[TokenRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("OAuth server already running")
        self._httpd = ThreadingHTTPServer((HOST, 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="oauth-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("OAuth server is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    # -- state ---------------------------------------------------------------------------

    def grant(self, token: str, user: str) -> None:
        with self._lock:
            self.access_tokens[token] = user

    def revoke(self, token: str) -> None:
        with self._lock:
            self.access_tokens.pop(token, None)

    def add_client(
        self,
        user: str,
        client_id: str,
        client_secret: str | None = None,
        *,
        refresh_token: str | None = None,
    ) -> str:
        """Register a client for ``user``; return its refresh token (a new one unless given:
        giving one makes a revoked or rotated-out refresh token valid again)."""
        if refresh_token is None:
            refresh_token = "rt-" + secrets.token_urlsafe(16)
        with self._lock:
            self.refresh_tokens[refresh_token] = (client_id, client_secret, user)
        return refresh_token

    def revoke_refresh_tokens(self) -> list[str]:
        """Make every refresh token invalid (``invalid_grant``); return those there were."""
        with self._lock:
            revoked = list(self.refresh_tokens)
            self.refresh_tokens.clear()
        return revoked

    def reset(self) -> None:
        """Forget tokens, clients, counters and injected failures."""
        with self._lock:
            self.access_tokens.clear()
            self.refresh_tokens.clear()
            self.introspections.clear()
            self.token_requests.clear()
            self.expires_in = 3600
            self.rotate_refresh_token = False
            self.fail_token_endpoint = None

    @property
    def token_request_count(self) -> int:
        with self._lock:
            return len(self.token_requests)

    # -- request handling (on the server's threads) --------------------------------------

    def _introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            self.introspections.append(token)
            user = self.access_tokens.get(token)
        if user is None:
            return {"active": False}  # RFC 7662 2.2: nothing else for an unknown token
        return {"active": True, "username": user, "token_type": "Bearer", "scope": "mail"}

    def _token(self, form: dict[str, str], authorization: str | None) -> tuple[int, Any]:
        with self._lock:
            self.token_requests.append(TokenRequest(dict(form), authorization))
            if self.fail_token_endpoint is not None:
                return self.fail_token_endpoint
            if form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            client = self.refresh_tokens.get(form.get("refresh_token", ""))
            if client is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown token"}
            client_id, client_secret, user = client
            if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
                return 401, {"error": "invalid_client"}
            access_token = "at-" + secrets.token_urlsafe(16)
            self.access_tokens[access_token] = user
            answer: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
            if self.expires_in is not None:
                answer["expires_in"] = self.expires_in
            if self.rotate_refresh_token:
                new = "rt-" + secrets.token_urlsafe(16)
                del self.refresh_tokens[form["refresh_token"]]
                self.refresh_tokens[new] = client
                answer["refresh_token"] = new
            return 200, answer


def _make_handler(server: OAuthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # Dovecot's HTTP client keeps connections open

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no noise on stderr; the server records what the tests need

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

        def _answer(self, status: int, payload: Any) -> None:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # introspection_mode = get (token appended) or auth
            url = urlsplit(self.path)
            if url.path != "/introspect":
                self._answer(404, {"error": "not_found"})
                return
            token = parse_qs(url.query).get("token", [""])[0]
            auth = self.headers.get("Authorization", "")
            if not token and auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            self._answer(200, server._introspect(token))

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            form = self._form()
            if path == "/introspect":  # introspection_mode = post: "token=..."
                self._answer(200, server._introspect(form.get("token", "")))
            elif path == "/token":
                status, payload = server._token(form, self.headers.get("Authorization"))
                self._answer(status, payload)
            else:
                self._answer(404, {"error": "not_found"})

    return Handler


# --------------------------------------------------------------------------------------------
# Dovecot with an oauth2 passdb
# --------------------------------------------------------------------------------------------

# Dovecot 2.3's oauth2 passdb (doc.dovecot.org/2.3, "OAuth2"): with only an
# introspection_url (no tokeninfo_url), every token is checked by RFC 7662 introspection.
_OAUTH2_CONF = """\
introspection_mode = {mode}
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 5000
"""

_OAUTH2_PASSDB = """
# XOAUTH2/OAUTHBEARER tokens go to the identity provider, never to the passwd-file (whose
# passdb serves PLAIN/LOGIN for the harness); the user comes from the passwd-file userdb.
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {args}
}}
"""


class OAuthDovecot(Dovecot):
    """The harness's Dovecot with XOAUTH2/OAUTHBEARER checked against ``introspection_url``.

    The rendered config of tests/servers.py is amended, not copied: only the mechanisms
    line and the passwd-file passdb's mechanisms change, and an oauth2 passdb is added.
    """

    def __init__(
        self,
        introspection_url: str,
        *,
        introspection_mode: str = "post",
        users: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        super().__init__(base_dir=base_dir, users=users)
        self.introspection_url = introspection_url
        self.introspection_mode = introspection_mode

    def _render(self) -> None:
        super()._render()
        conf_path = self.base_dir / "dovecot.conf"
        conf = conf_path.read_text()
        oauth2_conf = self.base_dir / "dovecot-oauth2.conf.ext"
        oauth2_conf.write_text(
            _OAUTH2_CONF.format(mode=self.introspection_mode, url=self.introspection_url)
        )
        conf = _replace_once(
            conf,
            "auth_mechanisms = plain login",
            "auth_mechanisms = plain login xoauth2 oauthbearer",
        )
        conf = _replace_once(
            conf,
            "  driver = passwd-file\n  args = scheme=PLAIN",
            "  driver = passwd-file\n  mechanisms = plain login\n  args = scheme=PLAIN",
        )
        conf += _OAUTH2_PASSDB.format(args=oauth2_conf)
        conf_path.write_text(conf)
        self._chown(oauth2_conf)


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        # tests/servers.py changed its template: fail loudly rather than test another setup.
        raise RuntimeError(f"expected {old!r} once in the Dovecot config")
    return text.replace(old, new)


# --------------------------------------------------------------------------------------------
# SMTP sink with AUTH XOAUTH2
# --------------------------------------------------------------------------------------------

# Gmail's answer to a refused XOAUTH2 token: a 334 challenge carrying this JSON, to which
# the client replies with an empty line; only then the 535.
_XOAUTH2_ERROR = json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"})


def parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """(user, token) from a decoded XOAUTH2 client response, or None if malformed."""
    parts = blob.split(b"\x01")
    if len(parts) < 3 or parts[-2:] != [b"", b""]:
        return None
    fields = dict(p.split(b"=", 1) for p in parts[:-2] if b"=" in p)
    user, auth = fields.get(b"user"), fields.get(b"auth", b"")
    if user is None or not auth.startswith(b"Bearer "):
        return None
    return user.decode("utf-8", "replace"), auth[7:].decode("utf-8", "replace")


class OAuthSmtpSink(SmtpSink):
    """The SMTP sink, also offering ``AUTH XOAUTH2`` for the tokens in ``tokens`` (token ->
    user). A successful XOAUTH2 login is recorded as ``auth_login`` with an empty password."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port, auth=True)
        self.tokens: dict[str, str] = {}
        self.xoauth2_attempts: list[tuple[str, bool]] = []  # (user, accepted)

    def clear(self) -> None:
        super().clear()
        with self._cond:
            self.tokens.clear()
            self.xoauth2_attempts.clear()

    # aiosmtpd hook for "AUTH XOAUTH2 [initial-response]" (docs/auth.rst, "AUTH hooks").
    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False)
        else:
            try:
                blob = b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parsed = parse_xoauth2(blob)
        if parsed is None:
            await server.push("501 5.5.2 Malformed XOAUTH2 response")
            return AuthResult(success=False, handled=True)
        user, token = parsed
        with self._cond:
            accepted = self.tokens.get(token) == user
            self.xoauth2_attempts.append((user, accepted))
        if accepted:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        await server.challenge_auth(_XOAUTH2_ERROR)  # the client answers with an empty line
        return AuthResult(success=False, handled=False)  # aiosmtpd then answers 535 5.7.8
