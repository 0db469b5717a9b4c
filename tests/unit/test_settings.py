from pathlib import Path

import pytest

from server.domain.identity import Principal, Role
from server.settings import Settings, SettingsError, load_settings, parse_api_tokens

TOKEN = "t" * 16


def _load(tmp_path: Path, **env: str) -> Settings:
    return load_settings({"BALLAST_DATA_DIR": str(tmp_path), **env})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BALLAST_GRPC_PORT", "abc"),
        ("BALLAST_GRPC_PORT", "70000"),
        ("BALLAST_DB_POOL_SIZE", "0"),
        ("BALLAST_LOG_LEVEL", "LOUD"),
        ("BALLAST_LOG_FORMAT", "xml"),
        ("BALLAST_ENV", "staging"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("NATS_URL", "http://localhost:4222"),
        ("BALLAST_RELAY_WORKERS", "33"),
        ("BALLAST_API_TOKENS", "short=client:service"),
        ("BALLAST_API_TOKENS", f"{TOKEN}=client:superuser"),
        ("BALLAST_API_TOKENS", f"{TOKEN}"),
        ("BALLAST_API_TOKENS", f"{TOKEN}={'c' * 129}:service"),
        ("BALLAST_API_TOKENS", f"{TOKEN}=two words:service"),
        ("BALLAST_PROVIDER_URL", "ftp://gateway"),
        ("BALLAST_HTTP_PORT", "70000"),
        ("BALLAST_PROVIDER_BREAKER_FAILURES", "0"),
        ("BALLAST_SIMULATOR_PROFILE", "stormy"),
        ("BALLAST_DEPLOYMENT", "Prod"),
        ("BALLAST_DEPLOYMENT", "prod.eu"),
        ("BALLAST_DEPLOYMENT", "p" * 33),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        _load(tmp_path, **{variable: value})
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


def test_production_requires_a_broker(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="NATS_URL"):
        _load(
            tmp_path,
            BALLAST_ENV="production",
            DATABASE_URL="postgresql://db/ballast",
            BALLAST_API_TOKENS=f"{TOKEN}=a:service",
        )


def test_production_requires_a_database_and_tokens(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        _load(tmp_path, BALLAST_ENV="production", BALLAST_API_TOKENS=f"{TOKEN}=a:service")
    with pytest.raises(SettingsError, match="BALLAST_API_TOKENS"):
        _load(tmp_path, BALLAST_ENV="production", DATABASE_URL="postgresql://db/ballast")


def test_development_generates_one_token_and_keeps_it(tmp_path: Path) -> None:
    first = load_settings({"BALLAST_DATA_DIR": str(tmp_path)})
    second = load_settings({"BALLAST_DATA_DIR": str(tmp_path)})
    assert first.development_token is not None
    assert first.development_token == second.development_token
    assert first.api_tokens == {first.development_token: Principal("dev", Role.ADMIN)}


def test_configured_tokens_replace_the_development_token(tmp_path: Path) -> None:
    settings = load_settings({"BALLAST_DATA_DIR": str(tmp_path), "BALLAST_API_TOKENS": f"{TOKEN}=orders:service"})
    assert settings.development_token is None
    assert settings.api_tokens == {TOKEN: Principal("orders", Role.SERVICE)}


def test_tokens_parse_into_clients_and_roles() -> None:
    tokens = parse_api_tokens(f"{'a' * 16}=orders:service, {'b' * 16}=ops:operator")
    assert tokens == {"a" * 16: Principal("orders", Role.SERVICE), "b" * 16: Principal("ops", Role.OPERATOR)}


def test_production_names_its_provider_and_secret(tmp_path: Path) -> None:
    production = {
        "BALLAST_ENV": "production",
        "DATABASE_URL": "postgresql://db/ballast",
        "BALLAST_API_TOKENS": f"{TOKEN}=a:service",
        "NATS_URL": "nats://nats:4222",
    }
    with pytest.raises(SettingsError, match="BALLAST_PROVIDER_URL"):
        _load(tmp_path, **production)
    with pytest.raises(SettingsError, match="BALLAST_PROVIDER_URL=off"):
        _load(tmp_path, **production, BALLAST_PROVIDER_URL="off")
    with pytest.raises(SettingsError, match="BALLAST_PROVIDER_WEBHOOK_SECRET"):
        _load(tmp_path, **production, BALLAST_PROVIDER_URL="https://gateway.example")
    settings = _load(
        tmp_path,
        **production,
        BALLAST_PROVIDER_URL="https://gateway.example",
        BALLAST_PROVIDER_WEBHOOK_SECRET="whsec_x",  # noqa: S106 - a test value
    )
    assert (settings.provider_url, settings.provider_enabled) == ("https://gateway.example", True)


def test_development_starts_the_simulator_unless_told_otherwise(tmp_path: Path) -> None:
    assert (_load(tmp_path).provider_url, _load(tmp_path).provider_enabled) == (None, True)
    off = _load(tmp_path, BALLAST_PROVIDER_URL="off")
    assert (off.provider_url, off.provider_enabled) == (None, False)


def test_one_deployment_name_names_the_stream_the_subjects_and_the_durable_consumers(tmp_path: Path) -> None:
    names = _load(tmp_path, BALLAST_DEPLOYMENT="staging-eu").nats_names
    assert (names.stream, names.subject_prefix, names.durable("exposures")) == (
        "STAGING_EU",
        "staging-eu",
        "staging-eu_exposures",
    )
    default = _load(tmp_path).nats_names
    assert (default.stream, default.subject_prefix) == ("BALLAST", "ballast")
