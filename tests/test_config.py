from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from triage.config import MailboxURL, Settings, load_settings
from triage.errors import ConfigError


def test_env_overrides_and_secrets_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_MAILBOX_URL", "imaps://helpdesk@mail.itx.net/INBOX")
    monkeypatch.setenv("TRIAGE_MAILBOX_PASSWORD", "hunter2-imap")
    monkeypatch.setenv("TRIAGE_SMTP_PASSWORD", "hunter2-smtp")
    monkeypatch.setenv("TRIAGE_BATCH_SIZE", "20")
    s = Settings()
    assert s.batch_size == 20
    assert s.mailbox.host == "mail.itx.net" and s.mailbox.port == 993
    assert s.mailbox.security == "tls"
    text = repr(s) + str(s) + s.model_dump_json()
    assert "hunter2" not in text
    assert s.mailbox_password is not None
    assert s.mailbox_password.get_secret_value() == "hunter2-imap"


def test_toml_file_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "triage.toml"
    cfg.write_text('batch_size = 7\nfrom_address = "Support@Example.com"\npoll_interval = 9\n')
    monkeypatch.setenv("TRIAGE_POLL_INTERVAL", "3")
    monkeypatch.delenv("TRIAGE_CONFIG_FILE", raising=False)
    s = load_settings(str(cfg))
    assert s.batch_size == 7 and s.from_address == "support@example.com"
    assert s.poll_interval == 3.0  # the environment wins over the file


def test_missing_config_file_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="config file not found"):
        load_settings("/nonexistent/triage.toml")


def test_unknown_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIAGE_CONFIG_FILE", raising=False)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("batchsize = 7\n")
    with pytest.raises(ConfigError, match="unknown setting 'batchsize': did you mean "
                       "'batch_size'"):
        load_settings(str(cfg))


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "folder", "security"),
    [
        ("imaps://u@mail.x.com/Help%20Desk", "imaps", "mail.x.com", 993, "Help Desk", "tls"),
        ("imap://u@mail.x.com:1143", "imap", "mail.x.com", 1143, "INBOX", "starttls"),
        ("imap+plain://u@127.0.0.1:1143/INBOX", "imap+plain", "127.0.0.1", 1143, "INBOX",
         "plain"),
    ],
)
def test_mailbox_urls(url: str, scheme: str, host: str, port: int, folder: str,
                      security: str) -> None:
    m = MailboxURL.parse(url)
    assert (m.scheme, m.host, m.port, m.folder, m.security) == (scheme, host, port, folder,
                                                                 security)


def test_maildir_url() -> None:
    assert MailboxURL.parse("maildir:///srv/mail/helpdesk").path == Path("/srv/mail/helpdesk")
    assert MailboxURL.parse("maildir://var/inbox").path == Path("var/inbox")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("imap+plain://u@mail.example.com/INBOX", "loopback"),
        ("imaps://u:secret@mail.example.com/INBOX", "TRIAGE_MAILBOX_PASSWORD"),
        ("pop3://u@mail.example.com/", "unsupported"),
        ("imaps://mail.example.com/", "user@host"),
    ],
)
def test_bad_mailbox_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MailboxURL.parse(url)


def test_bad_from_address() -> None:
    with pytest.raises(ValidationError):
        Settings(from_address="helpdesk@itx.net\r\nBcc: x@y.z")


def test_login_limits_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from triage.web.throttle import LoginLimits, Rate

    assert LoginLimits.from_settings(Settings()) == LoginLimits()  # the defaults agree
    for name, value in (("CLIENT_BURST", "4"), ("CLIENT_RATE", "0.5"), ("OVERALL_BURST", "9"),
                        ("OVERALL_RATE", "1.5"), ("PENDING", "2"), ("CLIENTS", "50"),
                        ("FREE_ATTEMPTS", "3"), ("NAME_FREE_ATTEMPTS", "7"),
                        ("FIRST_DELAY", "1"), ("MAX_DELAY", "60"), ("ARGON2_NICE", "0")):
        monkeypatch.setenv(f"TRIAGE_LOGIN_{name}", value)
    limits = LoginLimits.from_settings(Settings())
    assert (limits.per_client, limits.overall) == (Rate(4, 0.5), Rate(9, 1.5))
    assert (limits.pending, limits.clients, limits.argon2_nice) == (2, 50, 0)
    d = limits.delay
    assert (d.free_attempts, d.name_free_attempts) == (3, 7)
    assert [d.after(n) for n in (0, 1, 5, 6, 1000)] == [timedelta(seconds=s)
                                                        for s in (1, 2, 32, 60, 60)]
    monkeypatch.setenv("TRIAGE_LOGIN_PENDING", "0")
    with pytest.raises(ValidationError, match="login_pending"):
        Settings()
