"""``allotment operator``: flags become one settings object; bad combinations are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from allotment.cli.main import build_parser
from allotment.cli.operator import settings_from
from allotment.operator.settings import WebhookSettings


def test_flags_become_settings() -> None:
    args = build_parser().parse_args(
        ["operator", "--db", "postgresql://op@db/allotment", "--namespace", "shop",
         "--namespace", "billing", "--webhook-listen", "0.0.0.0:9443", "--webhook-cert", "t.crt",
         "--webhook-key", "t.key", "--sidecar-image", "mirror/allotment:1"]
    )  # fmt: skip
    settings = settings_from(args)
    assert settings.database_url == "postgresql://op@db/allotment"
    assert settings.namespaces == ("shop", "billing")
    assert settings.webhook == WebhookSettings("0.0.0.0", 9443, Path("t.crt"), Path("t.key"))
    assert settings.sidecar.image == "mirror/allotment:1"


def test_no_webhook_server_unless_asked() -> None:
    args = build_parser().parse_args(["operator", "--db", "sqlite:///l.db"])
    assert settings_from(args).webhook is None
    assert settings_from(args).namespaces == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["operator"], "no ledger given", id="no-db"),
        pytest.param(["operator", "--db", "sqlite:///l.db", "--webhook-listen", "127.0.0.1:9443"],
                     "needs --webhook-cert and --webhook-key", id="webhooks-without-tls"),
    ],
)  # fmt: skip
def test_refusals_say_what_to_do(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ALLOTMENT_DATABASE_URL", raising=False)
    args = build_parser().parse_args(argv)
    assert args.handler(args) == 2
    assert message in capsys.readouterr().err
