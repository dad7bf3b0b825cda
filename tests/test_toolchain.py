"""Provider mirror detection, the CLI configuration, and the generated backend and provider blocks."""

from __future__ import annotations

import pytest

from orchestrator.backend import backend_config, provider_config
from orchestrator.errors import ConfigurationError
from orchestrator.settings import DEFAULTS, StateSettings
from orchestrator.toolchain import detect_mirror, inspect_mirror, platform_name, render_cli_config


def make_unpacked_mirror(root, version="5.100.0"):
    folder = root / "registry.terraform.io" / "hashicorp" / "aws" / version / platform_name()
    folder.mkdir(parents=True)
    (folder / f"terraform-provider-aws_v{version}_x5").write_text("")
    return root


def make_packed_mirror(root, version="5.100.0"):
    folder = root / "registry.terraform.io" / "hashicorp" / "aws"
    folder.mkdir(parents=True)
    (folder / f"terraform-provider-aws_{version}_{platform_name()}.zip").write_text("")
    return root


def test_unpacked_mirror_is_recognised(tmp_path):
    mirror = inspect_mirror(make_unpacked_mirror(tmp_path / "mirror"))
    assert mirror.unpacked
    assert mirror.providers == ("registry.terraform.io/hashicorp/aws",)


def test_packed_mirror_is_recognised(tmp_path):
    mirror = inspect_mirror(make_packed_mirror(tmp_path / "mirror"))
    assert not mirror.unpacked
    assert mirror.providers == ("registry.terraform.io/hashicorp/aws",)


def test_empty_folder_is_no_mirror(tmp_path):
    assert inspect_mirror(tmp_path) is None


def test_configured_mirror_wins(tmp_path):
    make_unpacked_mirror(tmp_path / "custom")
    mirror = detect_mirror(str(tmp_path / "custom"), tmp_path, home=tmp_path / "home")
    assert mirror.path == (tmp_path / "custom").resolve()


def test_configured_mirror_relative_to_repo(tmp_path):
    make_unpacked_mirror(tmp_path / "repo" / "vendor" / "providers")
    mirror = detect_mirror("vendor/providers", tmp_path / "repo", home=tmp_path / "home")
    assert mirror.path == (tmp_path / "repo" / "vendor" / "providers").resolve()


def test_broken_configured_mirror_is_clear(tmp_path):
    with pytest.raises(ConfigurationError, match="contains no provider"):
        detect_mirror(str(tmp_path / "nothing"), tmp_path, home=tmp_path)


def test_mirror_found_in_home_plugins(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CLI_CONFIG_FILE", raising=False)
    home = tmp_path / "home"
    make_unpacked_mirror(home / ".terraform.d" / "plugins")
    assert detect_mirror("", tmp_path, home=home).path == (home / ".terraform.d" / "plugins").resolve()


def test_mirror_read_from_existing_cli_config(tmp_path, monkeypatch):
    make_unpacked_mirror(tmp_path / "from-config")
    config = tmp_path / "user.tfrc"
    config.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{tmp_path / "from-config"}"\n  }}\n}}\n')
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    assert detect_mirror("", tmp_path, home=tmp_path / "home").path == (tmp_path / "from-config").resolve()


def test_machine_mirror_is_detected_without_settings(tmp_path, monkeypatch):
    """On the machines this project runs on, the AWS provider must be found with no setting at all."""
    monkeypatch.delenv("TF_CLI_CONFIG_FILE", raising=False)
    mirror = detect_mirror("", tmp_path, home=tmp_path / "empty-home")
    assert mirror is not None
    assert "registry.terraform.io/hashicorp/aws" in mirror.providers


def test_cli_config_uses_mirror_then_direct(tmp_path):
    mirror = inspect_mirror(make_unpacked_mirror(tmp_path / "m"))
    text = render_cli_config(mirror, None)
    assert "disable_checkpoint = true" in text
    assert f'path    = "{mirror.path.as_posix()}"' in text
    assert 'include = ["registry.terraform.io/hashicorp/aws"]' in text
    assert 'exclude = ["registry.terraform.io/hashicorp/aws"]' in text
    assert "plugin_cache_dir" not in text


def test_cli_config_without_mirror_uses_cache(tmp_path):
    text = render_cli_config(None, tmp_path / "cache")
    assert f'plugin_cache_dir = "{(tmp_path / "cache").as_posix()}"' in text
    assert "provider_installation" not in text


def state_settings(**changes) -> StateSettings:
    return StateSettings(**{**DEFAULTS["state"], **changes})


def test_backend_uses_region_bucket_and_lockfile():
    config = backend_config(state_settings(), "s3/333333333333/us-east-1/app/terraform.tfstate", "us-east-1", "state", None)
    assert config["bucket"] == "tdo-tfstate-us-east-1"
    assert config["region"] == "us-east-1"
    assert config["key"] == "s3/333333333333/us-east-1/app/terraform.tfstate"
    assert config["encrypt"] is True
    assert config["use_lockfile"] is True
    assert "dynamodb_table" not in config
    assert "endpoints" not in config


def test_backend_dynamodb_lock_and_kms():
    config = backend_config(state_settings(lock="dynamodb", kms_key_id="alias/state"), "k", "eu-west-1", "state", None)
    assert config["dynamodb_table"] == "tdo-terraform-locks"
    assert "use_lockfile" not in config
    assert config["kms_key_id"] == "alias/state"


def test_backend_in_sandbox_points_to_loopback():
    config = backend_config(state_settings(), "k", "eu-west-1", "state", "http://127.0.0.1:5480")
    assert set(config["endpoints"].values()) == {"http://127.0.0.1:5480"}
    assert config["use_path_style"] is True


def test_provider_pins_account_and_region():
    config = provider_config("eu-west-1", "333333333333", "workload", None)
    assert config["allowed_account_ids"] == ["333333333333"]
    assert config["region"] == "eu-west-1"
    assert config["profile"] == "workload"
    assert "endpoints" not in config


def test_provider_in_sandbox_overrides_every_endpoint():
    config = provider_config("eu-west-1", "333333333333", "workload", "http://127.0.0.1:5480")
    endpoints = config["endpoints"][0]
    assert {"s3", "sts", "iam", "kms", "lambda"} <= set(endpoints)
    assert set(endpoints.values()) == {"http://127.0.0.1:5480"}
