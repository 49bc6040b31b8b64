"""Settings: ``TRIAGE_*`` environment variables over an optional TOML file, validated once.

Secrets are ``SecretStr`` so that a logged or printed Settings never shows them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from triage.errors import ConfigError
from triage.netutil import is_loopback
from triage.resources import DATA_DIR  # noqa: F401  (re-exported: the shipped data/)

if TYPE_CHECKING:
    from triage.oauth import Credential



Auth = Literal["password", "xoauth2"]


Provider = Literal["generic", "microsoft", "google"]
Flow = Literal["app", "delegated"]


class OAuthConfig(BaseModel):
    """An OAuth2 app for XOAUTH2 logins (``oauth = {...}`` in a ``[[mailboxes]]`` table;
    the TRIAGE_OAUTH_* settings otherwise). ``generic`` is the client-credentials grant
    against ``token_url``; ``microsoft`` and ``google`` are in triage.oauth_providers. The
    provider's defaults fill what is not given (its token URL and scope)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider = "generic"
    flow: Flow = "app"  # delegated: as a user, by a refresh token from `triage oauth login`
    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str = ""
    ca_file: Path | None = None  # trust for the token endpoint; the system's CAs otherwise
    secret_expires: date | datetime | None = None  # the client secret's end date (watched)
    tenant: str | None = None  # microsoft: the directory (tenant) id or domain
    authority: str | None = None  # microsoft: https://login.microsoftonline.com/TENANT
    certificate: Path | None = None  # microsoft app-only: PEM private key (+ certificate)
    certificate_thumbprint: str | None = None  # its SHA-1 thumbprint (Entra ID shows it)
    service_account: Path | None = None  # google app: the service account's JSON key file
    subject: str | None = None  # google app: the user to act as (the login user otherwise)
    auth_url: str | None = None  # google delegated: the authorisation endpoint
    refresh_token_days: float = Field(default=90.0, gt=0)  # a stored refresh token's life


class MailboxConfig(BaseModel):
    """One mailbox the daemon reads (several per process: a brand or tenant each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # the metrics label and log name
    url: str
    password: SecretStr | None = None
    mark: str = "flag"
    auth: Auth = "password"  # xoauth2: log in with a token from ``oauth`` (or TRIAGE_OAUTH_*)
    oauth: OAuthConfig | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        MailboxURL.parse(v)
        return v

    @property
    def parsed(self) -> MailboxURL:
        return MailboxURL.parse(self.url)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIAGE_", extra="forbid", frozen=True)

    mailbox_url: str = "maildir://var/inbox"
    mailbox_password: SecretStr | None = None
    mailbox_mark: str = "flag"  # "flag" ($Triaged keyword) or "move:Folder"
    # How the mailbox and SMTP log in: a password, or an OAuth2 token (XOAUTH2) from the
    # TRIAGE_OAUTH_* app (client credentials against any token endpoint).
    mailbox_auth: Auth = "password"
    smtp_auth: Auth = "password"
    oauth_provider: Provider = "generic"
    oauth_flow: Flow = "app"
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_scope: str = ""
    oauth_ca_file: Path | None = None
    oauth_tenant: str | None = None
    oauth_authority: str | None = None
    oauth_certificate: Path | None = None
    oauth_certificate_thumbprint: str | None = None
    oauth_service_account: Path | None = None
    oauth_subject: str | None = None
    oauth_auth_url: str | None = None
    oauth_refresh_token_days: float = Field(default=90.0, gt=0)
    # Encrypts delegated logins' refresh tokens in the database (Fernet keys, comma-separated:
    # the first encrypts, all decrypt).
    oauth_token_key: SecretStr | None = None
    # The client secret's end date (the IdP shows it): exposed as a metric, alerted 14 days
    # ahead, because a secret that lapses stops the mailbox.
    oauth_secret_expires: date | datetime | None = None
    # More than one mailbox: a list of MailboxConfig (TOML [[mailboxes]] tables, or JSON in
    # TRIAGE_MAILBOXES). When set, mailbox_url/_password/_mark/mailbox_id are not used.
    mailboxes: list[MailboxConfig] = Field(default_factory=list)
    smtp_url: str = "dir://var/outbox"  # smtps://, smtp:// (STARTTLS), smtp+plain:// (loopback), dir://
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    database_url: str = Field(default="sqlite:///var/triage.db", repr=False)  # may hold a password
    from_address: str = "helpdesk@itx.net"
    from_name: str = "ITX Helpdesk"
    helpdesk_phone: str = "800-600-7785"
    attachments_dir: Path = Path("var/attachments")
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    batch_size: int = Field(default=50, ge=1, le=500)
    # Where batches are parsed, classified and stored (triage.ingest): "process", a child
    # process, so acknowledgments go out on the other core meanwhile; "thread", a thread
    # of the daemon, everything in one process.
    ingest_worker: Literal["process", "thread"] = "process"
    # Hard limits on that child, so one pathological message ends only the child (and is
    # quarantined after a second try): its address space in bytes (RLIMIT_AS; 0 = none),
    # and the CPU seconds it may spend on one message (0 = no limit).
    ingest_memory_limit: int = Field(default=1024 * 1024 * 1024, ge=0)
    ingest_cpu_budget: float = Field(default=10.0, ge=0)
    poll_interval: float = Field(default=60.0, gt=0)
    use_idle: bool = True
    ack_rate_per_hour: int = Field(default=5, ge=0)  # per normalised address (addresses.py)
    # Backscatter limits beside the per-address one (5: a person writes that often only
    # in a loop or a forgery): a domain that is not free mail, and all acknowledgments
    # together. A client's whole office writing in one outage (a 20-30 seat office is the
    # size served) stays under the first; a forged-From flood across many domains hits the
    # second, at some 20 times the busiest hour of a desk that takes a few hundred mails a
    # day. Over a limit only the acknowledgment is left out: the work order is opened and
    # its ack_suppressed event says why. Raise both for a bulk import of old mail.
    ack_rate_per_domain_per_hour: int = Field(default=30, ge=0)
    ack_rate_global_per_hour: int = Field(default=1000, ge=0)
    # Domains that are ours besides from_address's: no automatic mail goes to any address
    # in them or their subdomains.
    own_domains: list[str] = Field(default_factory=list)
    outbox_interval: float = Field(default=5.0, gt=0)
    outbox_max_attempts: int = Field(default=8, ge=1)
    outbox_retry_base: float = Field(default=30.0, ge=0)
    outbox_retry_cap: float = Field(default=3600.0, gt=0)
    # A relay that refuses this many different recipients in this many domains in a row,
    # within the window (seconds), is taken to refuse everyone: the outbox pauses instead
    # of dead-lettering (triage.relay says why these numbers).
    relay_refusal_recipients: int = Field(default=3, ge=2)
    relay_refusal_domains: int = Field(default=2, ge=1)
    relay_refusal_window: float = Field(default=900.0, gt=0)
    review_threshold: float = Field(default=0.6, ge=0, le=1)
    model_path: Path | None = None
    sla_policy_path: Path | None = None
    # Acknowledgment and staff page templates; None: the templates/ shipped with triage.
    templates_dir: Path | None = None
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    shutdown_timeout: float = Field(default=30.0, gt=0)
    lease_retry: float = Field(default=5.0, gt=0)  # a standby's pause between lease tries
    # Operations endpoints (/metrics, /healthz, /readyz); port 0 turns them off.
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=9108, ge=0, le=65535)
    metrics_token: SecretStr | None = None
    mailbox_id: str = Field(default="helpdesk", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ready_timeout: float = Field(default=3.0, gt=0)
    # SLA watch: escalations to the lead, pages to on-call for 24x7 clients out of hours.
    sla_watch_interval: float = Field(default=60.0, gt=0)
    at_risk_fraction: float = Field(default=0.75, gt=0, lt=1)
    lead_address: str = "helpdesk-lead@itx.net"
    oncall_address: str | None = None
    # A Slack or Teams incoming-webhook URL: new urgent work orders and SLA breaches are
    # posted there (triage.notify). Secret: the URL itself is the credential.
    notify_webhook_url: SecretStr | None = None
    # Staff web app, served on the ops listener (ops_host:ops_port) beside /metrics.
    web_enabled: bool = True
    web_cookie_secure: bool = True  # browsers accept Secure cookies on http://localhost too
    web_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # Files staff attach to a reply (triage.desk.uploads): count, size each, size in all.
    reply_max_files: int = Field(default=10, ge=0, le=100)
    reply_max_file_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    reply_max_total_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    # POST /login limits (triage.web.throttle, triage.desk.logins): token buckets per client
    # address and overall (burst, attempts a second), checks in progress at once, the
    # progressive delay per name and address, and how much nicer the argon2 thread runs.
    login_client_burst: float = Field(default=10.0, ge=1)
    login_client_rate: float = Field(default=0.2, gt=0)
    login_overall_burst: float = Field(default=20.0, ge=1)
    login_overall_rate: float = Field(default=3.0, gt=0)
    login_pending: int = Field(default=4, ge=1, le=1000)
    login_clients: int = Field(default=10_000, ge=1)
    login_free_attempts: int = Field(default=5, ge=1)
    login_name_free_attempts: int = Field(default=20, ge=1)
    login_first_delay: float = Field(default=2.0, gt=0, le=3600)
    login_max_delay: float = Field(default=900.0, gt=0, le=86_400)
    login_argon2_nice: int = Field(default=19, ge=0, le=19)
    # Corrections become training data; a nightly retrain swaps the model in only when its
    # held-out macro-F1 is not worse. retrain_hour is UTC; -1 turns the job off.
    corrections_dir: Path = Path("var/corrections")
    retrained_model_dir: Path = Path("var/model")
    # What the retrain learns from and is judged on; None: the data/ shipped with triage.
    training_dir: Path | None = None
    heldout_dir: Path | None = None
    keywords_path: Path | None = None
    retrain_hour: int = Field(default=2, ge=-1, le=23)

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        scheme = v.get_secret_value().strip().split(":", 1)[0].lower()
        if scheme not in ("https", "http"):
            raise ValueError("must be an https:// URL (a Slack or Teams incoming webhook)")
        return SecretStr(v.get_secret_value().strip())

    @field_validator("from_address")
    @classmethod
    def _address(cls, v: str) -> str:
        if "@" not in v or any(c in v for c in "\r\n <>"):
            raise ValueError(f"not a plain address: {v!r}")
        return v.lower()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = settings_cls.model_config.get("toml_file") or os.environ.get(
            "TRIAGE_CONFIG_FILE")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    def own_addresses(self) -> list[str]:
        """Our addresses that automatic mail must never reach as a client would."""
        return [a for a in (self.from_address, self.lead_address, self.oncall_address) if a]

    def own_domain_names(self) -> list[str]:
        """``own_domains`` and from_address's domain. Not the lead's or on-call's: those may
        be elsewhere (a pager gateway), and only the address itself is ours."""
        return list(dict.fromkeys([*self.own_domains, self.from_address.rsplit("@", 1)[1]]))

    @property
    def mailbox(self) -> MailboxURL:
        return MailboxURL.parse(self.mailbox_url)

    @field_validator("mailboxes")
    @classmethod
    def _distinct(cls, v: list[MailboxConfig]) -> list[MailboxConfig]:
        for what, values in (("id", [m.id for m in v]), ("url", [m.url for m in v])):
            dup = {x for x in values if values.count(x) > 1}
            if dup:
                raise ValueError(f"mailboxes: {what} {sorted(dup)[0]!r} given twice")
        return v

    def mailbox_configs(self) -> list[MailboxConfig]:
        """The mailboxes to read: ``mailboxes`` when given, else the single mailbox_* one."""
        if self.mailboxes:
            return list(self.mailboxes)
        return [MailboxConfig(id=self.mailbox_id, url=self.mailbox_url,
                              password=self.mailbox_password, mark=self.mailbox_mark,
                              auth=self.mailbox_auth)]

    def oauth_settings(self) -> OAuthConfig:
        """The TRIAGE_OAUTH_* app, as a mailbox's own ``oauth`` table would give it."""
        return OAuthConfig(
            provider=self.oauth_provider, flow=self.oauth_flow, token_url=self.oauth_token_url,
            client_id=self.oauth_client_id, client_secret=self.oauth_client_secret,
            scope=self.oauth_scope, ca_file=self.oauth_ca_file,
            secret_expires=self.oauth_secret_expires, tenant=self.oauth_tenant,
            authority=self.oauth_authority, certificate=self.oauth_certificate,
            certificate_thumbprint=self.oauth_certificate_thumbprint,
            service_account=self.oauth_service_account, subject=self.oauth_subject,
            auth_url=self.oauth_auth_url, refresh_token_days=self.oauth_refresh_token_days)

    def mailbox_credential(self, cfg: MailboxConfig) -> Credential | None:
        """The OAuth app a mailbox logs in with; None for a password login. Its metrics
        label is the mailbox id for a mailbox's own ``oauth`` table, "oauth" for the shared
        TRIAGE_OAUTH_* one."""
        if cfg.auth != "xoauth2":
            return None
        user = cfg.parsed.user
        if cfg.oauth is not None:
            return credential(cfg.oauth, cfg.id, user)
        return credential(self.oauth_settings(), "oauth", user)

    def smtp_credential(self) -> Credential | None:
        """The OAuth app SMTP logs in with (the TRIAGE_OAUTH_* one); None for a password."""
        if self.smtp_auth != "xoauth2":
            return None
        return credential(self.oauth_settings(), "oauth", self.smtp_user or "")


def credential(oauth: OAuthConfig, name: str, user: str = "") -> Credential:
    """The settings as a ``triage.oauth.Credential`` for logging in as ``user``, with the
    provider's defaults; ValueError names what is missing."""
    from triage.oauth import Credential, secret_end
    from triage.oauth_providers import (
        GOOGLE_AUTH_URL,
        GOOGLE_SCOPE,
        GOOGLE_TOKEN_URL,
        MICROSOFT_APP_SCOPE,
        MICROSOFT_AUTHORITY,
        MICROSOFT_USER_SCOPE,
    )

    token_url, scope, authority = oauth.token_url, oauth.scope, oauth.authority or ""
    if oauth.provider == "microsoft":
        if not authority:
            if not oauth.tenant:
                raise ValueError("the microsoft provider needs tenant (or authority)")
            authority = f"{MICROSOFT_AUTHORITY}/{oauth.tenant}"
        authority = authority.rstrip("/")
        token_url = token_url or f"{authority}/oauth2/v2.0/token"
        scope = scope or (MICROSOFT_APP_SCOPE if oauth.flow == "app" else MICROSOFT_USER_SCOPE)
        needed = ["client_id"]
    elif oauth.provider == "google":
        scope = scope or GOOGLE_SCOPE
        if not token_url and oauth.flow == "app" and oauth.service_account is not None:
            token_url = _key_file_token_uri(oauth.service_account)
        token_url = token_url or GOOGLE_TOKEN_URL
        needed = ["service_account"] if oauth.flow == "app" else ["client_id"]
        user = oauth.subject or user
    else:
        needed = ["token_url", "client_id", "client_secret"]
    missing = [f for f in needed if not getattr(oauth, f)]
    if missing:
        raise ValueError(f"xoauth2 needs {', '.join(missing)} of the OAuth app")
    assert token_url
    return Credential(
        name=name, token_url=token_url, client_id=oauth.client_id or "",
        client_secret=oauth.client_secret.get_secret_value() if oauth.client_secret else "",
        scope=scope, provider=oauth.provider, ca_file=oauth.ca_file,
        secret_expires=secret_end(oauth.secret_expires), flow=oauth.flow,
        authority=authority, certificate=oauth.certificate,
        certificate_thumbprint=oauth.certificate_thumbprint or "",
        service_account=oauth.service_account, user=user,
        auth_url=oauth.auth_url or (GOOGLE_AUTH_URL if oauth.provider == "google" else ""),
        refresh_token_days=oauth.refresh_token_days)


def _key_file_token_uri(path: Path) -> str | None:
    """The ``token_uri`` a Google service account key file names (None: unreadable here;
    the token source then says why)."""
    import json

    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    uri = info.get("token_uri") if isinstance(info, dict) else None
    return uri if isinstance(uri, str) else None


class MailboxURL:
    """``imaps://user@host[:port]/FOLDER``, ``imap://`` (STARTTLS), ``imap+plain://`` (loopback
    only) or ``maildir:///path`` (also ``maildir://relative/path``)."""

    def __init__(
        self, scheme: str, host: str, port: int, user: str, folder: str, path: Path | None
    ) -> None:
        self.scheme, self.host, self.port, self.user = scheme, host, port, user
        self.folder, self.path = folder, path

    @classmethod
    def parse(cls, url: str) -> MailboxURL:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "maildir":
            raw = (parts.netloc + parts.path) if parts.netloc else parts.path
            if not raw:
                raise ValueError(f"maildir URL without a path: {url!r}")
            return cls(scheme, "", 0, "", "", Path(unquote(raw)))
        defaults = {"imaps": 993, "imap": 143, "imap+plain": 143}
        if scheme not in defaults:
            raise ValueError(
                f"unsupported mailbox URL scheme {scheme!r}: use imaps://USER@HOST/INBOX (TLS), "
                "imap:// (STARTTLS), imap+plain:// (loopback only) or maildir:///PATH")
        if parts.password:
            raise ValueError("put the mailbox password in TRIAGE_MAILBOX_PASSWORD, not the URL")
        if not parts.hostname or not parts.username:
            host = parts.hostname or "HOST"
            raise ValueError(f"mailbox URL needs user@host: write {scheme}://USER@{host}"
                             f"{parts.path or '/INBOX'}")
        if scheme == "imap+plain" and not is_loopback(parts.hostname):
            raise ValueError(
                f"plaintext IMAP is allowed only to a loopback host, not {parts.hostname!r}: "
                "use imaps:// (TLS) or imap:// (STARTTLS)")
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        return cls(
            scheme, parts.hostname, parts.port or defaults[scheme], unquote(parts.username),
            folder, None,
        )

    @property
    def security(self) -> Literal["tls", "starttls", "plain"]:
        return "tls" if self.scheme == "imaps" else "starttls" if self.scheme == "imap" else "plain"


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Build Settings once at start and check them (``check_settings``) before anything is
    touched. ``config_file`` is the ``--config`` TOML path (``TRIAGE_CONFIG_FILE`` also names
    one); environment variables win over the file. Every problem is a ``ConfigError`` whose
    one line names the setting and what to do."""
    if "TRIAGE_INGEST_PROCESS" in os.environ:  # a renamed setting must not be ignored
        raise ConfigError("TRIAGE_INGEST_PROCESS is now TRIAGE_INGEST_WORKER: "
                          "set it to process or thread")
    where = f"--config {config_file}"
    if not config_file and os.environ.get("TRIAGE_CONFIG_FILE"):
        config_file = os.environ["TRIAGE_CONFIG_FILE"]
        where = f"TRIAGE_CONFIG_FILE={config_file}"
    toml_keys: set[str] = set()
    if config_file:
        toml_keys = set(_read_toml(config_file, where))
    try:
        if not config_file:
            settings = Settings(**overrides)
        else:
            class FileSettings(Settings):
                model_config = SettingsConfigDict(toml_file=config_file)

            settings = FileSettings(**overrides)
    except ValidationError as e:
        raise ConfigError(_validation_line(e, where, config_file, toml_keys)) from e
    check_settings(settings)
    return settings


def _read_toml(path: str, where: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"{where}: config file not found: give the path of a TOML file "
                          "(or leave --config out and use TRIAGE_* variables)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from e
    except OSError as e:
        raise ConfigError(f"{where}: cannot be read: {e.strerror}") from e


_SECRET_FIELDS = ("password", "token", "secret", "database_url", "mailboxes", "webhook_url")


def setting_name(field: str, toml_keys: Collection[str] = (), config_file: str | None = None,
                 suffix: str = "") -> str:
    """How the operator wrote the setting: the TOML key when the file has it and the
    environment does not, else the ``TRIAGE_*`` variable; ``suffix`` is a place inside it."""
    env = f"TRIAGE_{field.upper()}"
    if field in toml_keys and env not in os.environ and config_file:
        return f"{field}{suffix} in {config_file}"
    return f"{env}{suffix}"


def _validation_line(e: ValidationError, where: str, config_file: str | None,
                     toml_keys: set[str]) -> str:
    """The first of pydantic's errors as one line; how many more, if any."""
    errors = e.errors()
    err = errors[0]
    loc = [str(x) for x in err["loc"]]
    field = loc[0] if loc else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        import difflib

        near = difflib.get_close_matches(field, Settings.model_fields, n=1)
        hint = f"did you mean {near[0]!r}?" if near else \
            "the settings are the TRIAGE_* names in lower case (README, Configuration)"
        return (f"{where if config_file else 'settings'}: unknown setting {field!r}: "
                f"{hint}{more}")
    suffix = "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc[1:])
    name = setting_name(field, toml_keys, config_file, suffix)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not any(s in field for s in _SECRET_FIELDS) and isinstance(err.get("input"), str | int):
        name += f": {err['input']!r}"
    hint = "" if "use " in msg else ": fix the value"
    return f"{name}: {msg[:1].lower() + msg[1:]}{hint}{more}"


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_settings(settings: Settings) -> None:
    """What pydantic's types cannot say: the URLs parse, name supported backends and keep
    passwords off the network in clear, and the SQLite folder exists (it is never created
    for a URL the operator gave: a typo must not become a new folder)."""
    if settings.mailboxes:
        for i, cfg in enumerate(settings.mailboxes):
            _check_mark(cfg.mark, f"mailboxes[{i}].mark")
    else:
        try:
            MailboxURL.parse(settings.mailbox_url)
        except ValueError as e:
            raise ConfigError(f"TRIAGE_MAILBOX_URL: {e}") from e
        _check_mark(settings.mailbox_mark, "TRIAGE_MAILBOX_MARK")
    check_oauth(settings)
    check_smtp_url(settings)
    check_database_url(settings.database_url,
                       explicit="database_url" in settings.model_fields_set)
    if settings.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"TRIAGE_LOG_LEVEL: {settings.log_level!r} is not a level: use one "
                          f"of {', '.join(_LOG_LEVELS)}")
    for field, path in (("sla_policy_path", settings.sla_policy_path),
                        ("model_path", settings.model_path)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TRIAGE_{field.upper()}: {path} does not exist: give the path "
                              "of an existing file, or unset it for the packaged one")


def _check_mark(mark: str, name: str) -> None:
    if mark != "flag" and not (mark.startswith("move:") and len(mark) > 5):
        raise ConfigError(f"{name}: {mark!r} is not a mark: use flag (the $Triaged keyword) "
                          "or move:FOLDER")


_OAUTH_NAMES = "TRIAGE_OAUTH_TOKEN_URL, TRIAGE_OAUTH_CLIENT_ID, TRIAGE_OAUTH_CLIENT_SECRET"


def check_oauth(settings: Settings) -> None:
    """An xoauth2 login has a complete OAuth app behind it, over TLS, for an IMAP mailbox or
    an SMTP server with a user to log in as; the files it names exist; a delegated login
    has a key to encrypt its refresh token with."""
    credentials: list[tuple[str, Credential]] = []
    for i, cfg in enumerate(settings.mailbox_configs()):
        if cfg.auth != "xoauth2":
            continue
        where = f"mailboxes[{i}]" if settings.mailboxes else "TRIAGE_MAILBOX_AUTH"
        if MailboxURL.parse(cfg.url).scheme == "maildir":
            raise ConfigError(f"{where}: xoauth2 is for IMAP mailboxes, not a Maildir: use "
                              "auth = password (the default)")
        names = f"{where}.oauth" if cfg.oauth is not None else _oauth_names(settings)
        try:
            found = settings.mailbox_credential(cfg)
        except ValueError as e:
            raise ConfigError(f"{names}: {e}: set them (README, OAuth2 mailboxes)") from e
        assert found is not None
        credentials.append((names, found))
    if settings.smtp_auth == "xoauth2":
        if settings.smtp_url.startswith("dir://"):
            raise ConfigError("TRIAGE_SMTP_AUTH: xoauth2 needs an SMTP server, not dir://: "
                              "use smtps://HOST or smtp://HOST")
        if not settings.smtp_user:
            raise ConfigError("TRIAGE_SMTP_USER: xoauth2 logs in as a mailbox: set it to the "
                              "address the acknowledgments are sent from")
        try:
            found = settings.smtp_credential()
        except ValueError as e:
            raise ConfigError(f"{_oauth_names(settings)}: {e}: set them (README, OAuth2 "
                              "mailboxes)") from e
        assert found is not None
        credentials.append((_oauth_names(settings), found))
    for names, c in credentials:
        for path in (c.certificate, c.service_account, c.ca_file):
            if path is not None and not path.is_file():
                raise ConfigError(f"{names}: {path} does not exist: give the path of the "
                                  "file (README, OAuth2 mailboxes)")
    if any(c.flow == "delegated" for _, c in credentials):
        if settings.oauth_token_key is None:
            raise ConfigError("TRIAGE_OAUTH_TOKEN_KEY: a delegated login keeps its refresh "
                              "token in the database, encrypted with this key: set it (README, "
                              "OAuth2 mailboxes)")
        from triage.oauth_store import token_cipher

        try:
            token_cipher(settings.oauth_token_key.get_secret_value())
        except ValueError as e:
            raise ConfigError(f"TRIAGE_OAUTH_TOKEN_KEY: {e}") from e


def _oauth_names(settings: Settings) -> str:
    """The TRIAGE_OAUTH_* settings an error about the shared app points at."""
    if settings.oauth_provider == "microsoft":
        return "TRIAGE_OAUTH_TENANT, TRIAGE_OAUTH_CLIENT_ID, TRIAGE_OAUTH_CLIENT_SECRET"
    if settings.oauth_provider == "google":
        return ("TRIAGE_OAUTH_SERVICE_ACCOUNT" if settings.oauth_flow == "app"
                else "TRIAGE_OAUTH_CLIENT_ID, TRIAGE_OAUTH_CLIENT_SECRET")
    return _OAUTH_NAMES


def check_smtp_url(settings: Settings) -> None:
    url = settings.smtp_url
    if url.startswith("dir://"):
        if not url[len("dir://"):]:
            raise ConfigError("TRIAGE_SMTP_URL: dir:// needs a folder: dir://var/outbox")
        return
    from triage.smtp import SmtpSettings

    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    if settings.smtp_auth == "xoauth2":
        password = None  # the token stands in for it (check_oauth)
    try:
        SmtpSettings.from_url(url, settings.smtp_user, password, auth=settings.smtp_auth)
    except ValueError as e:
        name = ("TRIAGE_SMTP_USER, TRIAGE_SMTP_PASSWORD" if "user and password" in str(e)
                else "TRIAGE_SMTP_URL")
        hint = "" if "use " in str(e) else \
            ": use smtps://HOST (TLS), smtp://HOST (STARTTLS) or dir://FOLDER"
        raise ConfigError(f"{name}: {e}{hint}") from e


_DB_HINT = "use sqlite:///PATH/triage.db or postgresql://USER@HOST/DATABASE"


def check_database_url(url: str, *, explicit: bool = True) -> None:
    """A URL SQLAlchemy can parse, of a backend we run on (SQLite, PostgreSQL with psycopg
    3). The URL is never echoed: it may carry a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        raise ConfigError(f"TRIAGE_DATABASE_URL: not a database URL: {_DB_HINT}") from None
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"TRIAGE_DATABASE_URL: {backend} is not supported: {_DB_HINT}")
    if backend == "postgresql" and u.drivername not in ("postgresql", "postgresql+psycopg"):
        raise ConfigError(f"TRIAGE_DATABASE_URL: driver {u.drivername} is not supported: "
                          "write postgresql://… (psycopg 3)")
    if backend == "sqlite" and u.database and u.database != ":memory:":
        folder = Path(u.database).parent
        if explicit and not folder.is_dir():
            raise ConfigError(f"TRIAGE_DATABASE_URL: the folder {folder} does not exist: "
                              f"create it (mkdir -p {folder}) or name an existing one")
