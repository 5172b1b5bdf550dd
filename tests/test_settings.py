import pytest

from workers.errors import ConfigError
from workers.settings import Settings, public_fields


def test_reads_environment_names_in_upper_case():
    settings = Settings.from_env({"BROKER_URL": "redis://x", "GPU_BATCH_SIZE": "4", "S3_SECURE": "true"})
    assert settings.broker_url == "redis://x" and settings.gpu_batch_size == 4 and settings.s3_secure is True
    assert not settings.embedded


def test_overrides_win_over_environment():
    assert Settings.from_env({"GPU_BATCH_SIZE": "4"}, gpu_batch_size=2).gpu_batch_size == 2


def test_default_is_embedded():
    assert Settings.from_env({}).embedded


@pytest.mark.parametrize(("env", "match"), [
    ({"GPU_BATCH_SIZE": "many"}, "GPU_BATCH_SIZE"),
    ({"S3_SECURE": "maybe"}, "S3_SECURE"),
    ({"GPU_BATCH_SIZE": "0"}, "GPU_BATCH_SIZE"),
    ({"TILE_SIZE": "16", "TILE_OVERLAP": "8"}, "TILE_SIZE"),
    ({"PRECISION": "int8"}, "PRECISION"),
])
def test_bad_values_are_config_errors_naming_the_variable(env, match):
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_secrets_have_no_flag_and_are_masked():
    names = {f.name for f in public_fields()}
    assert "aws_secret_access_key" not in names and "aws_access_key_id" not in names
    settings = Settings.from_env({"AWS_SECRET_ACCESS_KEY": "hunter2"})
    assert "hunter2" not in repr(settings)


def test_redis_password_from_environment_is_added_to_the_broker_url():
    settings = Settings.from_env({"BROKER_URL": "redis://127.0.0.1:6379/0", "REDIS_PASSWORD": "p@ss/word"})
    assert settings.broker_url_with_password == "redis://:p%40ss%2Fword@127.0.0.1:6379/0"
    assert "p@ss" not in repr(settings)


def test_password_already_in_the_url_is_kept_and_redacted():
    settings = Settings.from_env({"BROKER_URL": "redis://:s3cret@h:1/0", "REDIS_PASSWORD": "other"})
    assert settings.broker_url_with_password == "redis://:s3cret@h:1/0"
    assert "s3cret" not in repr(settings)
