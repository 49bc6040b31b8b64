"""Settings: ``TRIAGE_*`` environment variables over an optional TOML file, validated once.

Secrets are ``SecretStr`` so that a logged or printed Settings never shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from triage.netutil import is_loopback
from triage.resources import DATA_DIR  # noqa: F401  (re-exported: the shipped data/)


class MailboxConfig(BaseModel):
    """One mailbox the daemon reads (several per process: a brand or tenant each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # the metrics label and log name
    url: str
    password: SecretStr | None = None
    mark: str = "flag"

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
    # Parse, classify and store in a child process (triage.ingest), so acknowledgments
    # go out on the other core meanwhile; False keeps everything in one process.
    ingest_process: bool = True
    poll_interval: float = Field(default=60.0, gt=0)
    use_idle: bool = True
    ack_rate_per_hour: int = Field(default=5, ge=0)
    outbox_interval: float = Field(default=5.0, gt=0)
    outbox_max_attempts: int = Field(default=8, ge=1)
    outbox_retry_base: float = Field(default=30.0, ge=0)
    outbox_retry_cap: float = Field(default=3600.0, gt=0)
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
    # Staff web app, served on the ops listener (ops_host:ops_port) beside /metrics.
    web_enabled: bool = True
    web_cookie_secure: bool = True  # browsers accept Secure cookies on http://localhost too
    web_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # Corrections become training data; a nightly retrain swaps the model in only when its
    # held-out macro-F1 is not worse. retrain_hour is UTC; -1 turns the job off.
    corrections_dir: Path = Path("var/corrections")
    retrained_model_dir: Path = Path("var/model")
    # What the retrain learns from and is judged on; None: the data/ shipped with triage.
    training_dir: Path | None = None
    heldout_dir: Path | None = None
    keywords_path: Path | None = None
    retrain_hour: int = Field(default=2, ge=-1, le=23)

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
                              password=self.mailbox_password, mark=self.mailbox_mark)]


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
            raise ValueError(f"unsupported mailbox URL scheme {scheme!r} (imaps, imap, maildir)")
        if not parts.hostname or not parts.username:
            raise ValueError("mailbox URL needs user@host")
        if parts.password:
            raise ValueError("put the mailbox password in TRIAGE_MAILBOX_PASSWORD, not the URL")
        if scheme == "imap+plain" and not is_loopback(parts.hostname):
            raise ValueError("plaintext IMAP is allowed only to a loopback host")
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        return cls(
            scheme, parts.hostname, parts.port or defaults[scheme], unquote(parts.username),
            folder, None,
        )

    @property
    def security(self) -> Literal["tls", "starttls", "plain"]:
        return {"imaps": "tls", "imap": "starttls"}.get(self.scheme, "plain")  # type: ignore[return-value]


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Build Settings once at start; ``config_file`` is the ``--config`` TOML path
    (``TRIAGE_CONFIG_FILE`` also names one). Environment variables win over the file."""
    if not config_file:
        return Settings(**overrides)
    if not Path(config_file).is_file():
        raise ValueError(f"config file not found: {config_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return FileSettings(**overrides)
