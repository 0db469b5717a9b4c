"""Configuration from the environment, validated once at start-up.

A wrong value raises SettingsError with one line naming the variable; `python -m server` prints it
and exits with status 2. Every variable is listed, with its default, in README.md.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.domain.identity import CLIENT_ID_LENGTH_MAX, Principal, Role
from server.failpoints import FAILPOINTS_ENV
from server.failpoints import parse as parse_failpoints
from server.messaging.names import DEFAULT_DEPLOYMENT, DeploymentNames

API_TOKEN_LENGTH_MIN = 16
#: Client ids appear in ledger account names (merchant_payable:<client_id>), so they stay plain.
CLIENT_ID_PATTERN = re.compile(rf"[A-Za-z0-9_.@-]{{1,{CLIENT_ID_LENGTH_MAX}}}")
DEVELOPMENT_CLIENT_ID = "dev"


#: The webhook secret shared with the simulator `make run` starts; production sets its own.
DEVELOPMENT_WEBHOOK_SECRET = "whsec_ballast_development"  # noqa: S105 - a development default, refused in production


class SettingsError(ValueError):
    """One setting is wrong; the message names it and says what is expected."""


@dataclass(frozen=True)
class Settings:
    environment: str
    #: None means "start the embedded PostgreSQL" (development only).
    database_url: str | None
    grpc_host: str
    grpc_port: int
    #: Port of the Prometheus /metrics endpoint on grpc_host; 0 turns it off.
    metrics_port: int
    #: None means "start the embedded NATS" (development only).
    nats_url: str | None
    #: Outbox relays this process runs (0: none; run them with `python -m server relay` elsewhere).
    relay_workers: int
    relay_batch_size: int
    #: The JetStream stream and the subjects' first token: environments can share one NATS apart.
    #: the deployment's names on NATS (stream, subjects, durable consumers), from BALLAST_DEPLOYMENT
    nats_names: DeploymentNames
    #: How long published outbox events are kept (the window `republish` can replay) before pruning.
    outbox_retention_hours: int
    #: token -> principal
    api_tokens: Mapping[str, Principal] = field(repr=False)
    db_pool_size: int
    db_statement_timeout_ms: int
    request_timeout_ms: int
    shutdown_grace_ms: int
    log_level: str
    log_format: str
    data_dir: Path
    #: Port of the HTTP side (provider webhooks at /webhooks/<provider>) on grpc_host; 0 picks a free one.
    http_port: int = 8080
    #: The payment gateway's base URL; None means "start the provider simulator" (development only).
    provider_url: str | None = None
    #: False when BALLAST_PROVIDER_URL=off (development only): no provider, payments stay RECORDED.
    provider_enabled: bool = True
    provider_webhook_secret: str = field(default=DEVELOPMENT_WEBHOOK_SECRET, repr=False)
    breaker_failures_max: int = 5
    breaker_open_ms: int = 10_000
    #: The longest Ballast waits for one provider call; a timeout counts against the provider's breaker
    #: only when the provider had all of it (a caller's shorter deadline says nothing of its health).
    provider_timeout_ms: int = 10_000
    #: A payment still RECORDED (never sent, or sent and unknown to the provider) this long after its
    #: last submission attempt expires: its client never came back, and it is never sent late.
    payment_expiry_ms: int = 600_000
    #: A PENDING payment with no decision this long after it became PENDING is asked about.
    pending_overdue_ms: int = 30_000
    #: The longest wait between two checks of a payment the provider did not answer about (the backoff's cap).
    resolver_backoff_max_ms: int = 300_000
    #: how often each server pulls the provider's settlement reports of the last closed days (0: never)
    report_pull_interval_ms: int = 3_600_000
    report_pull_days: int = 3
    #: Failpoints armed for a crash test (server/failpoints.py); development only.
    failpoints: frozenset[str] = frozenset()
    #: The fault profile of the simulator started when provider_url is None.
    simulator_profile: str = "calm"
    #: The token `make run` prints; None unless it was generated for development.
    development_token: str | None = field(default=None, repr=False)

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: expected an integer from {low} to {high}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw!r} is invalid: expected an integer from {low} to {high}")
    return value


def _deployment(env: Mapping[str, str]) -> DeploymentNames:
    raw = env.get("BALLAST_DEPLOYMENT", "").strip() or DEFAULT_DEPLOYMENT
    try:
        return DeploymentNames(raw)
    except ValueError as error:
        raise SettingsError(f"BALLAST_DEPLOYMENT: {error}") from None


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = raw.lower() if name != "BALLAST_LOG_LEVEL" else raw.upper()
    if value not in choices:
        raise SettingsError(f"{name}={raw!r} is invalid: expected one of {', '.join(choices)}")
    return value


def parse_api_tokens(raw: str) -> dict[str, Principal]:
    """Parse `token=client_id:role,token=client_id:role`."""
    roles = ", ".join(role.value for role in Role)
    tokens: dict[str, Principal] = {}
    for position, item in enumerate(part.strip() for part in raw.split(",")):
        if not item:
            continue
        token, _, identity = item.partition("=")
        client_id, _, role = identity.partition(":")
        where = f"BALLAST_API_TOKENS entry {position + 1}"
        if not token or not client_id or not role:
            raise SettingsError(f"{where} is invalid: expected token=client_id:role")
        if not CLIENT_ID_PATTERN.fullmatch(client_id):
            raise SettingsError(
                f"{where} is invalid: client ids are 1 to {CLIENT_ID_LENGTH_MAX} letters, digits or _ . @ -"
            )
        if len(token) < API_TOKEN_LENGTH_MIN:
            raise SettingsError(f"{where} is invalid: tokens need at least {API_TOKEN_LENGTH_MIN} characters")
        if role not in Role.__members__.values():
            raise SettingsError(f"{where} is invalid: role {role!r} is not one of {roles}")
        if token in tokens:
            raise SettingsError(f"{where} is invalid: the same token appears twice")
        tokens[token] = Principal(client_id=client_id, role=Role(role))
    return tokens


def development_token(data_dir: Path) -> str:
    """The development token kept in <data_dir>/dev-token, created on first use."""
    path = data_dir / "dev-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    environment = _choice(env, "BALLAST_ENV", "development", ("development", "production"))
    data_dir = Path(env.get("BALLAST_DATA_DIR", "").strip() or ".data").absolute()

    database_url = env.get("DATABASE_URL", "").strip() or None
    if database_url is None and environment == "production":
        raise SettingsError("DATABASE_URL is required when BALLAST_ENV=production")
    if database_url is not None and not database_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("DATABASE_URL is invalid: expected postgresql://user:password@host:port/database")

    raw_tokens = env.get("BALLAST_API_TOKENS", "").strip()
    dev_token = None
    if raw_tokens:
        api_tokens = parse_api_tokens(raw_tokens)
        if not api_tokens:
            raise SettingsError("BALLAST_API_TOKENS is invalid: expected token=client_id:role[,...]")
    elif environment == "production":
        raise SettingsError("BALLAST_API_TOKENS is required when BALLAST_ENV=production")
    else:
        dev_token = development_token(data_dir)
        api_tokens = {dev_token: Principal(DEVELOPMENT_CLIENT_ID, Role.ADMIN)}

    nats_url = env.get("NATS_URL", "").strip() or None
    if nats_url is None and environment == "production":
        raise SettingsError("NATS_URL is required when BALLAST_ENV=production")
    if nats_url is not None and not nats_url.startswith(("nats://", "tls://")):
        raise SettingsError("NATS_URL is invalid: expected nats://host:port")

    provider_url = env.get("BALLAST_PROVIDER_URL", "").strip() or None
    provider_enabled = provider_url != "off"
    if provider_url is None and environment == "production":
        raise SettingsError("BALLAST_PROVIDER_URL is required when BALLAST_ENV=production")
    if not provider_enabled:
        if environment == "production":
            raise SettingsError("BALLAST_PROVIDER_URL=off is for development only")
        provider_url = None
    elif provider_url is not None and not provider_url.startswith(("http://", "https://")):
        raise SettingsError("BALLAST_PROVIDER_URL is invalid: expected http(s)://host:port, or off")
    webhook_secret = env.get("BALLAST_PROVIDER_WEBHOOK_SECRET", "").strip()
    if not webhook_secret:
        if environment == "production":
            raise SettingsError("BALLAST_PROVIDER_WEBHOOK_SECRET is required when BALLAST_ENV=production")
        webhook_secret = DEVELOPMENT_WEBHOOK_SECRET

    provider_timeout_ms = _integer(env, "BALLAST_PROVIDER_TIMEOUT_MS", 10_000, 50, 600_000)
    payment_expiry_ms = _integer(env, "BALLAST_PAYMENT_EXPIRY_MS", 600_000, 1_000, 30 * 86_400_000)
    if payment_expiry_ms < 2 * provider_timeout_ms:
        raise SettingsError(
            f"BALLAST_PAYMENT_EXPIRY_MS={payment_expiry_ms} is invalid: it must be at least twice"
            f" BALLAST_PROVIDER_TIMEOUT_MS ({provider_timeout_ms}), so no request is still on its way when a"
            " payment expires"
        )
    try:
        failpoints = parse_failpoints(env.get(FAILPOINTS_ENV, ""))
    except ValueError as error:
        raise SettingsError(f"{FAILPOINTS_ENV} is invalid: {error}") from None
    if failpoints and environment == "production":
        raise SettingsError(f"{FAILPOINTS_ENV} is for crash tests in development only")
    return Settings(
        environment=environment,
        database_url=database_url,
        grpc_host=env.get("BALLAST_GRPC_HOST", "").strip() or "127.0.0.1",
        grpc_port=_integer(env, "BALLAST_GRPC_PORT", 50051, 0, 65535),
        metrics_port=_integer(env, "BALLAST_METRICS_PORT", 9464, 0, 65535),
        nats_url=nats_url,
        relay_workers=_integer(env, "BALLAST_RELAY_WORKERS", 1, 0, 32),
        relay_batch_size=_integer(env, "BALLAST_RELAY_BATCH_SIZE", 500, 1, 5000),
        nats_names=_deployment(env),
        outbox_retention_hours=_integer(env, "BALLAST_OUTBOX_RETENTION_HOURS", 168, 1, 24 * 365),
        api_tokens=api_tokens,
        db_pool_size=_integer(env, "BALLAST_DB_POOL_SIZE", 20, 1, 500),
        db_statement_timeout_ms=_integer(env, "BALLAST_DB_STATEMENT_TIMEOUT_MS", 5000, 100, 600_000),
        request_timeout_ms=_integer(env, "BALLAST_REQUEST_TIMEOUT_MS", 10_000, 100, 600_000),
        shutdown_grace_ms=_integer(env, "BALLAST_SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
        log_level=_choice(env, "BALLAST_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        log_format=_choice(env, "BALLAST_LOG_FORMAT", "json", ("json", "console")),
        data_dir=data_dir,
        http_port=_integer(env, "BALLAST_HTTP_PORT", 8080, 0, 65535),
        provider_url=provider_url,
        provider_enabled=provider_enabled,
        provider_webhook_secret=webhook_secret,
        breaker_failures_max=_integer(env, "BALLAST_PROVIDER_BREAKER_FAILURES", 5, 1, 1000),
        breaker_open_ms=_integer(env, "BALLAST_PROVIDER_BREAKER_OPEN_MS", 10_000, 10, 3_600_000),
        provider_timeout_ms=provider_timeout_ms,
        payment_expiry_ms=payment_expiry_ms,
        pending_overdue_ms=_integer(env, "BALLAST_PENDING_OVERDUE_MS", 30_000, 100, 86_400_000),
        resolver_backoff_max_ms=_integer(env, "BALLAST_RESOLVER_BACKOFF_MAX_MS", 300_000, 1_000, 86_400_000),
        report_pull_interval_ms=_integer(env, "BALLAST_REPORT_PULL_INTERVAL_MS", 3_600_000, 0, 86_400_000),
        report_pull_days=_integer(env, "BALLAST_REPORT_PULL_DAYS", 3, 1, 31),
        simulator_profile=_choice(
            env,
            "BALLAST_SIMULATOR_PROFILE",
            "calm",
            ("calm", "flaky", "monday-morning", "webhook-storm", "report-drift"),
        ),
        failpoints=failpoints,
        development_token=dev_token,
    )
