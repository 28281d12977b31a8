"""The config: every problem at once, with its TOML path; env vars; secret files; no leaks."""

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from syncer.configfile import load, parse
from syncer.errors import ConfigError

MINIMAL = """
[source]
url = "sqlite:///app.db"
table = "users"

[mapping.user_properties]
phone_number = "phone"

[blux]
application_id = "abcd1234"
secret_key = "${BLUX_SECRET_KEY}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_with_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL), env={"BLUX_SECRET_KEY": "s3cr3t-value"})
    assert config.capture.mode == "snapshot"
    assert config.blux is not None
    assert config.blux.secret_key.reveal() == "s3cr3t-value"
    assert config.blux.update_batch_size == 100 and config.blux.update_rate == 20
    assert config.blux.delete_batch_size == 3000 and config.blux.delete_rate == 100
    assert config.nachocode is None
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config.blux.secret_key)
    assert repr(config.blux.secret_key) == "'********'"


def test_every_problem_is_reported_at_once_with_its_path(tmp_path: Path) -> None:
    text = """
[source]
url = "postgresql://u:pw@db/app"
table = "users"
query = "SELECT 1"

[capture]
mode = "watermark"
lookback = 5

[mapping.user_properties]
phone = "phone"

[blux]
secret_key = "k"
update_batch_size = 500

[nachocode]
api_key = "${MISSING_VAR}"
secret_key = "x"
method = "PUT"
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    for expected in [
        "[capture] lookback is not a known key",
        "[mapping.user_properties] phone is not a known key",
        "[blux] application_id is missing",
        "[blux] update_batch_size must be at most 100",
        "environment variable MISSING_VAR is not set",
        "[nachocode] method must be one of",
    ]:
        assert expected in message, expected
    assert all(line.startswith(str(path)) for line in message.splitlines())
    assert "pw" not in message


def test_mode_specific_requirements(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="watermark_column"):
        load(write(tmp_path, MINIMAL + '\n[capture]\nmode = "watermark"\n'),
             env={"BLUX_SECRET_KEY": "k"})
    with pytest.raises(ConfigError, match="exactly one of `table` or `query`"):
        parse({"source": {"url": "sqlite://", "table": "a", "query": "SELECT 1"},
               "nachocode": {"api_key": "a", "secret_key": "b"}})
    with pytest.raises(ConfigError, match="at least one destination"):
        parse({"source": {"url": "sqlite://", "table": "a"}})
    with pytest.raises(ConfigError, match="crontab"):
        parse({"source": {"url": "sqlite://", "table": "a"},
               "capture": {"reconcile_cron": "every day"},
               "nachocode": {"api_key": "a", "secret_key": "b"}})


def test_secret_files_for_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "blux.key").write_text("from-a-file\n")
    text = MINIMAL.replace('secret_key = "${BLUX_SECRET_KEY}"', 'secret_key_file = "blux.key"')
    config = load(write(tmp_path, text))
    assert config.blux is not None and config.blux.secret_key.reveal() == "from-a-file"
    both = MINIMAL.replace('secret_key = "${BLUX_SECRET_KEY}"',
                           'secret_key = "a"\nsecret_key_file = "blux.key"')
    with pytest.raises(ConfigError, match="not both"):
        load(write(tmp_path, both))
    missing = MINIMAL.replace('secret_key = "${BLUX_SECRET_KEY}"', 'secret_key_file = "nope"')
    with pytest.raises(ConfigError, match="secret_key_file: cannot read"):
        load(write(tmp_path, missing))


def test_env_escape_and_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "blux").write_text("k1")
    text = MINIMAL.replace('secret_key = "${BLUX_SECRET_KEY}"',
                           'secret_key_file = "${CREDENTIALS_DIRECTORY}/blux"')
    text = text.replace('table = "users"', 'table = "users"\nquery_comment = "$${literal}"')
    with pytest.raises(ConfigError, match="query_comment is not a known key"):
        load(write(tmp_path, text), env={"CREDENTIALS_DIRECTORY": str(creds)})
    ok = load(write(tmp_path, text.replace('query_comment = "$${literal}"\n', "")),
              env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.blux is not None and ok.blux.secret_key.reveal() == "k1"


def test_rates_above_the_documents_are_allowed_with_a_warning(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL + "update_rate = 50\n"), env={"BLUX_SECRET_KEY": "k"})
    assert any("above the documented" in w for w in config.warnings())


def test_plain_http_to_another_host_is_warned_about() -> None:
    def warnings(blux: str, nachocode: str) -> list[str]:
        return parse({"source": {"url": "sqlite://", "table": "u"},
                      "mapping": {"user_properties": {"phone_number": "phone"}},
                      "blux": {"base_url": blux, "application_id": "a", "secret_key": "k"},
                      "nachocode": {"base_url": nachocode, "api_key": "a",
                                    "secret_key": "b"}}).warnings()

    found = warnings("http://user:pw@api.example.com:8080/prod", "http://10.0.0.7")
    assert any(w.startswith("[blux] base_url") and "api.example.com" in w and "https" in w
               for w in found), found
    assert any(w.startswith("[nachocode] base_url") and "10.0.0.7" in w for w in found), found
    assert not any(":pw@" in w for w in found)
    for local in ("http://127.0.0.1:8089/blux", "http://localhost:8089", "http://[::1]:80",
                  "http://127.3.4.5", "https://api.blux.ai/prod"):
        assert not any("base_url" in w for w in warnings(local, local)), local


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[source\nurl="))


def test_secret_values_cover_url_passwords() -> None:
    config = parse({"source": {"url": "postgresql://reader:pa55word@db/app", "table": "u"},
                    "state": {"url": "sqlite:///s.db"},
                    "nachocode": {"api_key": "api-key-1", "secret_key": "secret-2"}})
    assert set(config.secret_values()) == {"pa55word", "api-key-1", "secret-2"}
    assert "pa55word" not in config.source.redacted_url


@pytest.mark.parametrize("url, secret", [
    ("postgresql://u@h/db?password=s3cret-1", "s3cret-1"),
    ("postgresql://u@h/db?sslmode=require&SSLPASSWORD=s3cret-2", "s3cret-2"),
    ("mysql+pymysql://u@h/db?passwd=s3cret-3&charset=utf8mb4", "s3cret-3"),
    ("mysql+pymysql://u@h/db?Pwd=s3cret-4", "s3cret-4"),
    ("postgresql://u@h/db?auth_token=s3cret-5", "s3cret-5"),
    ("postgresql://u@h/db?client_secret=s3cret-6", "s3cret-6"),
    ("postgresql://u@h/db?options=-c%20password%3Ds3cret-7", "s3cret-7"),
    ("postgresql://u@h/db?dsn=host%3Dh%20password%3D%27s3cret-8%27", "s3cret-8"),
    ("postgresql://u:s3cret-9@h/db?password=s3cret-10", "s3cret-10"),
    ("not a url ?password=s3cret-11", "s3cret-11"),
    ("postgresql://u@h/db?user=a@b&password=s3cret-12", "s3cret-12"),
])
def test_passwords_in_the_url_query_are_masked_and_scrubbed(url: str, secret: str) -> None:
    from syncer.secret import redact_url

    config = parse({"source": {"url": url, "table": "u"},
                    "nachocode": {"api_key": "api-key-1", "secret_key": "secret-2"}})
    assert secret in config.secret_values()
    assert "s3cret" not in redact_url(url)
    assert "s3cret" not in config.source.redacted_url
    kept = redact_url("postgresql://u@h/db?sslmode=require&password=x1x1x1&application_name=a")
    assert "sslmode=require" in kept and "application_name=a" in kept and "x1x1" not in kept


def test_a_dollar_in_an_identifier_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"source": {"url": "sqlite://", "table": "users$x", "primary_key": "id$"},
               "capture": {"outbox_table": "out$syncer$box"},
               "mapping": {"custom_user_properties": {"name": "na$me"}},
               "nachocode": {"api_key": "a", "secret_key": "b"}})
    message = str(info.value)
    for key in ("[source] table", "[source] primary_key", "[capture] outbox_table",
                "[mapping.custom_user_properties] name"):
        assert f"{key} must be a plain SQL identifier" in message, key
    assert "no `$`" in message


def test_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    config = load(example, env={"BLUX_SECRET_KEY": "a", "NACHOCODE_API_KEY": "b",
                                "NACHOCODE_SECRET_KEY": "c", "SOURCE_DB_PASSWORD": "d"})
    assert config.blux is not None and config.nachocode is not None


def test_commands_that_send_nothing_do_without_the_api_secrets(tmp_path: Path) -> None:
    text = MINIMAL.replace('secret_key = "${BLUX_SECRET_KEY}"',
                           'secret_key_file = "${CREDENTIALS_DIRECTORY}/blux"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        load(path, env={})
    config = load(path, env={}, secrets=False)      # status, plan, migrate, outbox
    assert config.blux is not None and "not loaded" in config.blux.secret_key.reveal()
    with pytest.raises(ConfigError, match="application_id"):   # everything else still counts
        load(write(tmp_path, text.replace('application_id = "abcd1234"\n', "")), env={},
             secrets=False)


def test_relative_sqlite_paths_are_relative_to_the_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ob"
    folder.mkdir()
    write(folder, MINIMAL.replace('table = "users"', 'table = "users"\n\n[state]\n'
                                  'url = "sqlite:///state.db"\nkey_file = "keys/fp.key"'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load("../ob/config.toml", env={"BLUX_SECRET_KEY": "s"})
    assert make_url(config.state.url).database == str(folder / "state.db")
    assert config.state.key_file == str(folder / "keys" / "fp.key")
    assert make_url(config.source.url).database == str(folder / "app.db")


@pytest.mark.parametrize("url, expected", [
    ("sqlite:////abs/state.db", "sqlite:////abs/state.db"),
    ("sqlite://", "sqlite://"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("sqlite:///sub/s.db?timeout=5", "sqlite:///{base}/sub/s.db?timeout=5"),
    ("sqlite+pysqlite:///file:s.db?mode=ro&uri=true",
     "sqlite+pysqlite:///file:{base}/s.db?mode=ro&uri=true"),
    ("sqlite:///file:mem?mode=memory&uri=true", "sqlite:///file:mem?mode=memory&uri=true"),
    ("postgresql://u@db/app", "postgresql://u@db/app"),
    ("sqlite:///50%25 off.db", "sqlite:///{base}/50%25 off.db"),
])
def test_which_state_urls_are_resolved(tmp_path: Path, url: str, expected: str) -> None:
    raw = {"source": {"url": "postgresql://u@db/app", "table": "users"},
           "state": {"url": url}, "mapping": {"user_properties": {"phone_number": "phone"}},
           "blux": {"application_id": "a", "secret_key": "s"}}
    got = make_url(parse(raw, base_dir=tmp_path).state.url)
    want = make_url(expected.format(base=tmp_path))
    assert (got.drivername, got.database, dict(got.query)) == \
        (want.drivername, want.database, dict(want.query))
