"""The ``microsoft`` and ``google`` providers against the local token server (tests.oauthserver):
msal's discovery, client secret and certificate; the device-code login and its refresh token
kept encrypted in the database (SQLite and PostgreSQL), rotated under a lock by processes
sharing it; google-auth's service-account grant. Mail servers are Dovecot and aiosmtpd
where a login is what is tested (test_oauth has the rest of XOAUTH2)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select

from tests.oauthserver import BAD_SECRET, TokenServer
from triage.config import ConfigError, Settings, load_settings
from triage.mailbox.imap import ImapMailbox
from triage.oauth import Credential, TokenRejected, TokenSources
from triage.oauth_providers import (
    DelegatedSource,
    GoogleServiceAccountSource,
    MicrosoftAppSource,
)
from triage.oauth_store import Grant, TokenStore
from triage.storage.engine import make_engine
from triage.storage.models import OAuthToken

REPO = Path(__file__).resolve().parents[1]
PEM = serialization.Encoding.PEM


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """The certificate uploaded to the app registration."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "triage app")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))


def microsoft(tokens: TokenServer, client_id: str, **kw: object) -> Credential:
    authority = f"{tokens.url}/contoso"
    kw.setdefault("ca_file", tokens.ca.ca)
    return Credential("oauth", f"{authority}/oauth2/v2.0/token", client_id,  # type: ignore[arg-type]
                      provider="microsoft", authority=authority, **kw)


# ---- microsoft, app-only (msal) -------------------------------------------------------------
async def test_microsoft_client_secret_through_msal_discovery(tokens: TokenServer) -> None:
    cid, secret = tokens.add_client("helpdesk@itx.net")
    source = TokenSources().get(microsoft(tokens, cid, client_secret=secret))
    assert isinstance(source, MicrosoftAppSource)
    first = await source.token()
    assert tokens.active(first) == "helpdesk@itx.net"
    assert "discovery" in tokens.requests  # msal read the OpenID configuration
    assert await source.token() == first  # cached
    source.invalidate(first)  # a server refused it: msal's own cache must not give it back
    second = await source.token()
    assert second != first and tokens.issued_to(cid) == [first, second]


async def test_microsoft_certificate_with_and_without_thumbprint(tokens: TokenServer,
                                                                 tmp_path: Path) -> None:
    """With the certificate in the file msal signs PS256 with its SHA-256 thumbprint; with
    only the key and the SHA-1 thumbprint Entra ID shows, RS256. The server checks the
    signature with the registered public key either way."""
    key = rsa_key()
    cert = self_signed(key)
    cid = tokens.add_cert_client("helpdesk@itx.net", key.public_key())
    both = tmp_path / "app.pem"
    both.write_text(key_pem(key) + cert.public_bytes(PEM).decode())
    only_key = tmp_path / "key.pem"
    only_key.write_text(key_pem(key))
    thumb = cert.fingerprint(hashes.SHA1()).hex().upper()
    for c in (microsoft(tokens, cid, certificate=both),
              microsoft(tokens, cid, certificate=only_key, certificate_thumbprint=thumb)):
        token = await TokenSources().get(c).token()
        assert tokens.active(token) == "helpdesk@itx.net"
    other = tmp_path / "other.pem"
    other_key = rsa_key()
    other.write_text(key_pem(other_key) + self_signed(other_key).public_bytes(PEM).decode())
    with pytest.raises(TokenRejected, match="invalid_client: AADSTS700027"):
        await TokenSources().get(microsoft(tokens, cid, certificate=other)).token()
    with pytest.raises(TokenRejected, match="holds no certificate"):
        await TokenSources().get(microsoft(tokens, cid, certificate=only_key)).token()


async def test_microsoft_refusals_in_the_idps_words(tokens: TokenServer) -> None:
    cid, secret = tokens.add_client("helpdesk@itx.net")
    outcomes: list[tuple[str, str]] = []
    sources = TokenSources(lambda name, outcome: outcomes.append((name, outcome)))
    with pytest.raises(TokenRejected) as e:
        await sources.get(microsoft(tokens, cid, client_secret="Sec~wrong")).token()
    assert str(e.value) == f"token rejected: invalid_client: {BAD_SECRET}"
    assert outcomes == [("oauth", "rejected")]
    authority = f"{tokens.url}/no-such-tenant"
    wrong_tenant = Credential("oauth", f"{authority}/oauth2/v2.0/token", cid, secret,
                              provider="microsoft", authority=authority, ca_file=tokens.ca.ca)
    with pytest.raises(TokenRejected, match=r"token rejected: .*no-such-tenant"):
        await TokenSources().get(wrong_tenant).token()


async def test_microsoft_app_only_imap_login_on_dovecot(tokens: TokenServer,
                                                        dovecot_oauth) -> None:
    cid, secret = tokens.add_client(dovecot_oauth.user)
    source = TokenSources().get(microsoft(tokens, cid, client_secret=secret))
    mailbox = ImapMailbox(dovecot_oauth.host, dovecot_oauth.port, dovecot_oauth.user, "",
                          security="plain", tokens=source)
    await mailbox.connect()
    try:
        assert mailbox.connected and await mailbox.count_waiting() == 0
    finally:
        await mailbox.close()
    assert "method=XOAUTH2" in dovecot_oauth.server.log_tail(50)


def test_microsoft_settings_fill_the_providers_defaults(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    for k in [k for k in os.environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(k)
    base = {"mailbox_url": "imaps://helpdesk%40itx.net@outlook.office365.com/INBOX",
            "database_url": f"sqlite:///{tmp_path / 't.db'}", "mailbox_auth": "xoauth2",
            "oauth_provider": "microsoft", "oauth_client_id": "app"}
    with pytest.raises(ConfigError, match=r"TRIAGE_OAUTH_TENANT.*needs tenant"):
        load_settings(**base, oauth_client_secret="Sec-1")
    with pytest.raises(ConfigError, match="a client secret or a certificate"):
        load_settings(**base, oauth_tenant="contoso.onmicrosoft.com")
    with pytest.raises(ConfigError, match=r"missing\.pem does not exist"):
        load_settings(**base, oauth_tenant="t", oauth_certificate=str(tmp_path / "missing.pem"))
    s = load_settings(**base, oauth_tenant="contoso.onmicrosoft.com",
                      oauth_client_secret="Sec-1")
    c = s.mailbox_credential(s.mailbox_configs()[0])
    assert c is not None and c.provider == "microsoft" and c.flow == "app"
    assert c.authority == "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    assert c.scope == "https://outlook.office365.com/.default"
    with pytest.raises(ConfigError, match="TRIAGE_OAUTH_TOKEN_KEY: a delegated login"):
        load_settings(**base, oauth_tenant="t", oauth_flow="delegated")
    with pytest.raises(ConfigError, match="TRIAGE_OAUTH_TOKEN_KEY: not a Fernet key"):
        load_settings(**base, oauth_tenant="t", oauth_flow="delegated",
                      oauth_token_key="not-a-key")
    d = load_settings(**base, oauth_tenant="t", oauth_flow="delegated",
                      oauth_token_key=Fernet.generate_key().decode())
    c = d.mailbox_credential(d.mailbox_configs()[0])
    assert c is not None and c.user == "helpdesk@itx.net"
    assert "IMAP.AccessAsUser.All" in c.scope


# ---- microsoft, delegated: the device-code login and the stored refresh token ---------------
def delegated_env(tokens: TokenServer, user: str, client_id: str, db: str,
                  key: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | {
        "TRIAGE_MAILBOX_URL": f"imap+plain://{user}@127.0.0.1:1/INBOX",
        "TRIAGE_MAILBOX_AUTH": "xoauth2", "TRIAGE_OAUTH_PROVIDER": "microsoft",
        "TRIAGE_OAUTH_FLOW": "delegated", "TRIAGE_OAUTH_AUTHORITY": f"{tokens.url}/contoso",
        "TRIAGE_OAUTH_CLIENT_ID": client_id, "TRIAGE_OAUTH_CA_FILE": str(tokens.ca.ca),
        "TRIAGE_OAUTH_TOKEN_KEY": key, "TRIAGE_DATABASE_URL": db}


def device_login(tokens: TokenServer, env: dict[str, str], signs_in_as: str) -> str:
    """``triage oauth login`` as a user runs it: read the code it prints, sign in with it
    (the server's approve_device), wait for it to store the token. Its output."""
    lines = []
    with subprocess.Popen([sys.executable, "-m", "triage", "oauth", "login"], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:  # ends when the command does
                lines.append(line)
                if line.startswith("code: "):
                    tokens.approve_device(line.split()[1], signs_in_as)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, "".join(lines)
    return "".join(lines)


async def test_device_code_login_stores_an_encrypted_refresh_token_that_rotates(
        tokens: TokenServer, db_url: str) -> None:
    user = "helpdesk@itx.net"
    cid = tokens.add_public_client()
    key = Fernet.generate_key().decode()
    out = device_login(tokens, delegated_env(tokens, user, cid, db_url, key), user)
    assert f"{tokens.url}/devicelogin" in out and f"authorised: {user}" in out
    (rt,) = [t for t, v in tokens.refresh_tokens.items() if v.client_id == cid]
    assert rt not in out
    engine = make_engine(db_url)
    try:
        row = _row(engine)
        assert rt not in row.refresh_token and rt.encode() not in _raw_db(engine)
        settings = Settings(**_settings_kw(delegated_env(tokens, user, cid, db_url, key)))
        credential = settings.mailbox_credential(settings.mailbox_configs()[0])
        assert credential is not None
        seen: list[tuple[str, datetime.datetime]] = []
        sources = TokenSources()
        sources.store = TokenStore(engine, key)
        sources.observe_refresh = lambda name, at: seen.append((name, at))
        source = sources.get(credential)
        assert isinstance(source, DelegatedSource)
        refreshes = tokens.requests.count("refresh ok")
        login_token = await source.token()  # the one the login got, from the database
        assert tokens.active(login_token) == user
        assert tokens.requests.count("refresh ok") == refreshes
        source.invalidate(login_token)
        fresh = await source.token()  # a server refused it: the refresh token is redeemed
        assert fresh != login_token and tokens.active(fresh) == user
        assert tokens.requests.count("refresh ok") == refreshes + 1
        assert rt not in tokens.refresh_tokens  # rotated: the old one is dead
        (rotated,) = [t for t, v in tokens.refresh_tokens.items() if v.client_id == cid]
        stored = TokenStore(engine, key)._open(_row(engine).refresh_token, credential)
        assert stored == rotated  # saved at once
        assert _row(engine).issued_at > row.issued_at
        assert seen and seen[-1][0] == "oauth"
        assert abs((seen[-1][1] - _row(engine).issued_at).total_seconds() - 90 * 86400) < 1
        with pytest.raises(TokenRejected, match="cannot be decrypted"):
            TokenStore(engine, Fernet.generate_key().decode()).access_token(
                credential, None, lambda rt: Grant("x", 1))
        tokens.revoke_refresh_tokens(cid)
        source.invalidate(fresh)
        with pytest.raises(TokenRejected, match="invalid_grant: AADSTS700082"):
            await source.token()
    finally:
        engine.dispose()


def _settings_kw(env: dict[str, str]) -> dict[str, object]:
    return {k[len("TRIAGE_"):].lower(): v for k, v in env.items() if k.startswith("TRIAGE_")}


def _row(engine: Engine) -> OAuthToken:
    with engine.connect() as conn:
        return conn.execute(select(OAuthToken)).one()  # type: ignore[return-value]


def _raw_db(engine: Engine) -> bytes:
    """Every byte the table holds, as text: what a database dump would show."""
    with engine.connect() as conn:
        rows = conn.execute(select(OAuthToken.__table__)).all()
    return repr(rows).encode()


@pytest.mark.postgres
async def test_processes_sharing_postgresql_never_race_a_rotation(tokens: TokenServer,
                                                                  pg_url: str) -> None:
    """Four processes (their own engines, connections and token sources) need a new access
    token at the same moment; the server refuses a refresh token used twice. Under the lock
    exactly one redeems it, the others take the token it stored."""
    user = "helpdesk@itx.net"
    cid = tokens.add_public_client()
    key = Fernet.generate_key().decode()
    device_login(tokens, delegated_env(tokens, user, cid, pg_url, key), user)
    env = delegated_env(tokens, user, cid, pg_url, key)
    script = ("import asyncio, sys\n"
              "from triage.config import load_settings\n"
              "from triage.wiring import token_sources\n"
              "from triage.storage.engine import make_engine\n"
              "s = load_settings()\n"
              "src = token_sources(s, make_engine(s.database_url)).get(\n"
              "    s.mailbox_credential(s.mailbox_configs()[0]))\n"
              "src.invalidate(sys.argv[1])\n"
              "print(asyncio.run(src.token()) == sys.argv[1])\n")
    first = [t for t in tokens.issued if tokens.tokens[t].client_id == cid][-1]
    refused, refreshes = tokens.requests.count("refresh refused"), \
        tokens.requests.count("refresh ok")
    procs = [subprocess.Popen([sys.executable, "-c", script, first], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.strip() for o in outs] == ["False"] * 4
    assert tokens.requests.count("refresh refused") == refused
    assert tokens.requests.count("refresh ok") == refreshes + 1
    assert len([t for t in tokens.issued if tokens.tokens[t].client_id == cid]) == 2


# ---- google, service account with domain-wide delegation (google-auth) --------------------
def service_account_file(tokens: TokenServer, tmp_path: Path, users: tuple[str, ...]) -> Path:
    key = rsa_key()
    email = f"triage-{os.urandom(3).hex()}@itx-mail.iam.gserviceaccount.com"
    tokens.add_service_account(email, key.public_key(), users)
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "itx-mail", "private_key_id": "k1",
        "private_key": key_pem(key), "client_email": email, "client_id": "1234567890",
        "token_uri": tokens.token_url}))
    return path


async def test_google_service_account_acts_for_the_mailbox_user(tokens: TokenServer,
                                                                 dovecot_oauth,
                                                                 tmp_path: Path) -> None:
    user = dovecot_oauth.user
    key_file = service_account_file(tokens, tmp_path, (user,))
    settings = Settings(
        mailbox_url=f"imap+plain://{user}@127.0.0.1:{dovecot_oauth.port}/INBOX",
        mailbox_auth="xoauth2", oauth_provider="google", oauth_service_account=key_file,
        oauth_ca_file=tokens.ca.ca, database_url=f"sqlite:///{tmp_path / 't.db'}")
    credential = settings.mailbox_credential(settings.mailbox_configs()[0])
    assert credential is not None and credential.token_url == tokens.token_url
    source = TokenSources().get(credential)
    assert isinstance(source, GoogleServiceAccountSource)
    mailbox = ImapMailbox(dovecot_oauth.host, dovecot_oauth.port, user, "",
                          security="plain", tokens=source)
    await mailbox.connect()
    await mailbox.close()
    assert "jwt ok" in tokens.requests
    assert "method=XOAUTH2" in dovecot_oauth.server.log_tail(50)
    # The account may not act for someone else: refused in Google's words.
    other = Credential("x", tokens.token_url, "", provider="google",
                       service_account=key_file, user="ceo@itx.net", ca_file=tokens.ca.ca)
    with pytest.raises(TokenRejected, match="unauthorized_client: Client is unauthorized"):
        await TokenSources().get(other).token()
    # A key the server does not know (a deleted key): the signature check fails.
    (tmp_path / "x").mkdir()
    forged = service_account_file(TokenServer(tokens.ca), tmp_path / "x", (user,))
    stranger = Credential("x", tokens.token_url, "", provider="google",
                          service_account=forged, user=user, ca_file=tokens.ca.ca)
    with pytest.raises(TokenRejected, match="invalid_grant: Invalid JWT Signature"):
        await TokenSources().get(stranger).token()


async def test_tasks_share_one_google_grant(tokens: TokenServer, tmp_path: Path) -> None:
    key_file = service_account_file(tokens, tmp_path, ("helpdesk@itx.net",))
    c = Credential("x", tokens.token_url, "", provider="google", service_account=key_file,
                   user="helpdesk@itx.net", ca_file=tokens.ca.ca)
    source = TokenSources().get(c)
    before = tokens.requests.count("jwt ok")
    got = await asyncio.gather(*(source.token() for _ in range(4)))
    assert len(set(got)) == 1 and tokens.requests.count("jwt ok") == before + 1
    assert time.time() < (source.expires_at or 0)


# ---- google, installed app: triage oauth login with a loopback redirect ---------------------
async def test_google_installed_app_login_then_imap(tokens: TokenServer, dovecot_oauth,
                                                    tmp_path: Path) -> None:
    """``triage oauth login`` prints the consent URL; the "browser" (urllib) opens it, the
    server's consent sends it to the loopback port with a code, the command exchanges it
    (PKCE) and stores the refresh token; the mailbox then logs in on Dovecot with a token
    redeemed from it."""
    user = dovecot_oauth.user
    cid, secret = tokens.add_client("")
    key = Fernet.generate_key().decode()
    db = f"sqlite:///{tmp_path / 'triage.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | {
        "TRIAGE_MAILBOX_URL": f"imap+plain://{user}@127.0.0.1:{dovecot_oauth.port}/INBOX",
        "TRIAGE_MAILBOX_AUTH": "xoauth2", "TRIAGE_OAUTH_PROVIDER": "google",
        "TRIAGE_OAUTH_FLOW": "delegated", "TRIAGE_OAUTH_CLIENT_ID": cid,
        "TRIAGE_OAUTH_CLIENT_SECRET": secret, "TRIAGE_OAUTH_TOKEN_URL": tokens.token_url,
        "TRIAGE_OAUTH_AUTH_URL": f"{tokens.url}/authorize",
        "TRIAGE_OAUTH_CA_FILE": str(tokens.ca.ca), "TRIAGE_OAUTH_TOKEN_KEY": key,
        "TRIAGE_DATABASE_URL": db}
    tokens.consenting_user = user
    lines: list[str] = []
    ctx = ssl.create_default_context(cafile=str(tokens.ca.ca))
    try:
        with subprocess.Popen([sys.executable, "-m", "triage", "oauth", "login"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    lines.append(line)
                    if line.startswith("url: "):
                        url = line.split(None, 1)[1].strip()
                        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
                        assert query["code_challenge_method"] == "S256"
                        assert query["scope"] == "https://mail.google.com/"
                        with urllib.request.urlopen(url, timeout=30, context=ctx) as r:
                            assert b"Authorised" in r.read()
                proc.wait(120)
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        tokens.consenting_user = None
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert f"authorised: {user}" in out and secret not in out
    settings = Settings(**_settings_kw(env))
    engine = make_engine(db)
    try:
        sources = TokenSources()
        sources.store = TokenStore(engine, key)
        credential = settings.mailbox_credential(settings.mailbox_configs()[0])
        assert credential is not None
        source = sources.get(credential)
        refreshes = tokens.requests.count("refresh ok")
        source.invalidate(await source.token())  # the login's token refused: redeem the RT
        mailbox = ImapMailbox(dovecot_oauth.host, dovecot_oauth.port, user, "",
                              security="plain", tokens=source)
        await mailbox.connect()
        await mailbox.close()
        assert tokens.requests.count("refresh ok") == refreshes + 1
    finally:
        engine.dispose()
