"""``triage oauth login``: authorise a delegated XOAUTH2 login once, keep its refresh token.

- ``microsoft``: the device-code flow (msal). The command prints Microsoft's verification
  URL and code; anyone who can sign in as the mailbox user opens it on any device, and the
  command, polling meanwhile, stores the refresh token. No redirect URI, no browser here.
- ``google``: the installed-app flow with PKCE and a loopback redirect: the command listens
  on 127.0.0.1 (``--port``, for an SSH tunnel ``ssh -L PORT:127.0.0.1:PORT server``) and
  prints the consent URL; the browser that completes the consent is sent back to that
  address with the authorisation code. (Google allows neither the device flow nor the
  out-of-band copy-and-paste for the ``https://mail.google.com/`` scope.)

The refresh token goes to the database, encrypted (triage.oauth_store); it is never
printed or logged.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import secrets
import ssl
import sys
import threading
import urllib.parse
from typing import Any

from triage.config import Settings, load_settings
from triage.errors import ConfigError, RunFailure
from triage.oauth import Credential, TokenError
from triage.oauth_store import Grant, TokenStore

LOGIN_TIMEOUT = 900.0  # seconds the user has to complete the consent


def cmd_login(ns: argparse.Namespace) -> int:
    settings = load_settings(ns.config)
    credential = login_credential(settings, ns.mailbox, smtp=ns.smtp)
    if settings.oauth_token_key is None:
        raise ConfigError("TRIAGE_OAUTH_TOKEN_KEY: needed to encrypt the refresh token")
    from triage.storage.engine import make_engine
    from triage.storage.migrate import upgrade

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        store = TokenStore(engine, settings.oauth_token_key.get_secret_value())
        try:
            if credential.provider == "microsoft":
                grant = microsoft_device_login(credential)
            else:
                grant = google_installed_login(credential, port=ns.port)
            store.save_login(credential, grant)
        except TokenError as e:
            raise RunFailure(f"login for {credential.user} failed: {e}") from None
    finally:
        engine.dispose()
    print(f"authorised: {credential.user} ({credential.describe()}); the refresh token is "
          "stored, encrypted, in the database", flush=True)
    return 0


def login_credential(settings: Settings, mailbox: str | None, *, smtp: bool) -> Credential:
    """The delegated credential of mailbox ``mailbox`` (or SMTP's)."""
    if smtp:
        found = settings.smtp_credential()
        where = "TRIAGE_SMTP_AUTH"
    else:
        configs = settings.mailbox_configs()
        ids = [c.id for c in configs]
        cfg = configs[0] if mailbox is None else next((c for c in configs if c.id == mailbox),
                                                      None)
        if cfg is None:
            raise ConfigError(f"--mailbox: no mailbox {mailbox!r}: the configured ones are "
                              f"{', '.join(ids)}")
        found = settings.mailbox_credential(cfg)
        where = f"mailbox {cfg.id}"
    if found is None:
        raise ConfigError(f"{where}: not an xoauth2 login: nothing to authorise")
    if found.flow != "delegated":
        raise ConfigError(f"{where}: the {found.provider} app logs in as itself (flow = app): "
                          "there is nothing to authorise; set flow = delegated "
                          "(TRIAGE_OAUTH_FLOW) for a user's login")
    return found


def microsoft_device_login(credential: Credential, out: Any = None) -> Grant:
    """The device-code flow: print Microsoft's instructions, poll until the user is done."""
    from triage.oauth_providers import MICROSOFT_USER_SCOPE, msal_app, msal_result

    out = out or sys.stdout
    app = msal_app(credential, public=True)
    flow = app.initiate_device_flow(scopes=(credential.scope or MICROSOFT_USER_SCOPE).split())
    if "user_code" not in flow:
        raise RunFailure(f"the device-code flow could not start: {flow.get('error')}: "
                         f"{(str(flow.get('error_description') or '').splitlines() or [''])[0]}")
    print(f"Sign in as {credential.user}: {flow['message']}", file=out, flush=True)
    print(f"url: {flow['verification_uri']}\ncode: {flow['user_code']}", file=out, flush=True)
    result = app.acquire_token_by_device_flow(flow)
    token, lifetime, refresh = msal_result(credential, result)
    signed_in = (result.get("id_token_claims") or {}).get("preferred_username")
    if signed_in and signed_in.lower() != credential.user.lower():
        raise RunFailure(f"signed in as {signed_in}, not {credential.user}: sign in as the "
                         "mailbox user")
    return Grant(token, lifetime, refresh)


def google_installed_login(credential: Credential, *, port: int = 0, out: Any = None) -> Grant:
    """The installed-app flow: consent in a browser, the code back on a loopback port."""
    out = out or sys.stdout
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    got: dict[str, str] = {}
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return None  # the code travels in the query string

        def do_GET(self) -> None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if query.get("state") != state:
                self.send_error(400, "not this login")
                return
            got.update(query)
            body = (b"Authorised: you may close this page." if "code" in query
                    else b"Not authorised: see the terminal.")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            done.set()

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    redirect = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    try:
        url = credential.auth_url + "?" + urllib.parse.urlencode({
            "client_id": credential.client_id, "redirect_uri": redirect,
            "response_type": "code", "scope": credential.scope, "access_type": "offline",
            "prompt": "consent", "login_hint": credential.user, "state": state,
            "code_challenge": challenge, "code_challenge_method": "S256"})
        print(f"Sign in as {credential.user} and allow access: open\nurl: {url}\n"
              f"(the browser is then sent to {redirect}: on another machine, forward the "
              f"port first: ssh -L {server.server_address[1]}:127.0.0.1:"
              f"{server.server_address[1]} THIS-HOST)", file=out, flush=True)
        if not done.wait(LOGIN_TIMEOUT):
            raise RunFailure(f"no answer from the browser within {LOGIN_TIMEOUT:.0f} s")
    finally:
        server.shutdown()
        server.server_close()
    if "code" not in got:
        raise RunFailure(f"consent refused: {got.get('error', 'no code')}")
    return _google_exchange(credential, got["code"], verifier, redirect)


def _google_exchange(credential: Credential, code: str, verifier: str,
                     redirect: str) -> Grant:
    """The authorisation code for tokens (RFC 6749 4.1.3 with PKCE's verifier)."""
    import httpx

    from triage.oauth import HTTP_TIMEOUT, idp_refusal

    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "client_id": credential.client_id, "code_verifier": verifier}
    if credential.client_secret:
        form["client_secret"] = credential.client_secret
    where = urllib.parse.urlsplit(credential.token_url).netloc
    verify = ssl.create_default_context(
        cafile=str(credential.ca_file) if credential.ca_file else None)
    try:
        response = httpx.post(credential.token_url, data=form, timeout=HTTP_TIMEOUT,
                              verify=verify)
    except httpx.HTTPError as e:
        raise RunFailure(f"token endpoint {where} unreachable: {type(e).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict) or \
            not body.get("access_token"):
        body = body if isinstance(body, dict) else {}
        raise idp_refusal(body.get("error"), body.get("error_description"),
                          response.status_code, where)
    return Grant(str(body["access_token"]), float(body.get("expires_in", 3600)),
                 body.get("refresh_token"))
