"""The Terraform toolchain of a run: binary, provider mirror and the CLI configuration file.

The orchestrator writes its own CLI configuration for every run instead of relying on the
caller's ``TF_CLI_CONFIG_FILE`` (which may not exist). An unpacked filesystem mirror needs no
plugin cache at all, because Terraform links each working directory to the mirror's files.
That also keeps parallel ``init`` free of the plugin-cache race ("text file busy", checksum
mismatch). Any other source uses a plugin cache, and ``init`` is then serialised by a lock.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError
from .terraform import binary_version, resolve_binary

logger = logging.getLogger(__name__)

MIRROR_ENVIRONMENT_VARIABLE = "ORCHESTRATOR_PROVIDER_MIRROR"
REQUIRED_PROVIDER = ("registry.terraform.io", "hashicorp", "aws")


@dataclass(frozen=True)
class ProviderMirror:
    path: Path
    unpacked: bool
    providers: tuple[str, ...]  # e.g. ("registry.terraform.io/hashicorp/aws",)


@dataclass(frozen=True)
class Toolchain:
    binary: str
    version: str
    mirror: ProviderMirror | None
    cli_config_path: Path
    plugin_cache_dir: Path | None

    @property
    def init_needs_lock(self) -> bool:
        return self.plugin_cache_dir is not None


def platform_name() -> str:
    """Return Terraform's name of this platform, such as ``linux_amd64``."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386", "i686": "386"}.get(machine, machine)
    return f"{platform.system().lower()}_{arch}"


def inspect_mirror(path: Path) -> ProviderMirror | None:
    """Describe the provider mirror at ``path``, or return None when it contains no provider for this platform."""
    if not path.is_dir():
        return None
    target = platform_name()
    providers: set[str] = set()
    unpacked = False
    for hostname in (p for p in path.iterdir() if p.is_dir() and "." in p.name):
        for namespace in (p for p in hostname.iterdir() if p.is_dir()):
            for provider in (p for p in namespace.iterdir() if p.is_dir()):
                address = f"{hostname.name}/{namespace.name}/{provider.name}"
                if any(provider.glob(f"*/{target}")):
                    providers.add(address)
                    unpacked = True
                elif any(provider.glob(f"terraform-provider-{provider.name}_*_{target}.zip")):
                    providers.add(address)
    if not providers:
        return None
    return ProviderMirror(path=path.resolve(), unpacked=unpacked, providers=tuple(sorted(providers)))


def _mirror_paths_in_cli_config(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    found = []
    for block in re.finditer(r"filesystem_mirror\s*\{(.*?)\}", text, re.DOTALL):
        match = re.search(r'path\s*=\s*"([^"]+)"', block.group(1))
        if match:
            found.append(Path(os.path.expanduser(match.group(1))))
    return found


def mirror_candidates(home: Path) -> list[Path]:
    """List the folders where a provider mirror is looked for, most specific first.

    Order: the caller's existing CLI configuration, Terraform's implied local mirror folders,
    then folders directly below /opt and /usr/local/share that contain a registry host folder.
    """
    candidates: list[Path] = []
    for config in (os.environ.get("TF_CLI_CONFIG_FILE"), str(home / ".terraformrc")):
        if config:
            candidates.extend(_mirror_paths_in_cli_config(Path(config)))

    data_home = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    candidates += [home / ".terraform.d" / "plugins", data_home / "terraform" / "plugins"]
    for data_dir in (os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":"):
        if data_dir:
            candidates.append(Path(data_dir) / "terraform" / "plugins")

    for root in (Path("/opt"), Path("/usr/local/share")):
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / REQUIRED_PROVIDER[0]).is_dir():
                    candidates.append(child)
                elif child.is_dir() and (child / "plugins" / REQUIRED_PROVIDER[0]).is_dir():
                    candidates.append(child / "plugins")
    return candidates


def detect_mirror(configured: str, repo_root: Path, home: Path | None = None) -> ProviderMirror | None:
    """Find the provider mirror: the setting, then the environment variable, then the usual folders."""
    home = home or Path.home()
    explicit = configured or os.environ.get(MIRROR_ENVIRONMENT_VARIABLE, "")
    if explicit:
        path = Path(os.path.expanduser(explicit))
        if not path.is_absolute():
            path = repo_root / path
        mirror = inspect_mirror(path)
        if mirror is None:
            raise ConfigurationError(
                f"provider mirror {path} contains no provider for {platform_name()}; it must contain "
                "registry.terraform.io/<namespace>/<name>/<version>/<platform>/ (unpacked) or the release zips (packed). "
                "Fix terraform.provider_mirror in orchestrator.toml or ORCHESTRATOR_PROVIDER_MIRROR"
            )
        return mirror

    for candidate in mirror_candidates(home):
        mirror = inspect_mirror(candidate)
        if mirror and "/".join(REQUIRED_PROVIDER) in mirror.providers:
            return mirror
    return None


def render_cli_config(mirror: ProviderMirror | None, plugin_cache_dir: Path | None) -> str:
    """Return the text of the Terraform CLI configuration for a run."""
    lines = ["# Written by the orchestrator for its own runs; edits are overwritten.", "disable_checkpoint = true"]
    if plugin_cache_dir is not None:
        lines.append(f'plugin_cache_dir = "{plugin_cache_dir.as_posix()}"')
    if mirror is not None:
        included = ", ".join(f'"{address}"' for address in mirror.providers)
        lines += [
            "provider_installation {",
            "  filesystem_mirror {",
            f'    path    = "{mirror.path.as_posix()}"',
            f"    include = [{included}]",
            "  }",
            "  direct {",
            f"    exclude = [{included}]",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def prepare_toolchain(binary_setting: str, mirror_setting: str, repo_root: Path, work_dir: Path) -> Toolchain:
    """Resolve the binary and mirror and write the CLI configuration file under ``work_dir``."""
    binary = resolve_binary(binary_setting)
    version = binary_version(binary)
    mirror = detect_mirror(mirror_setting, repo_root)
    if mirror is None:
        logger.warning("no provider mirror found; providers will be downloaded from their registries (set terraform.provider_mirror to use one)")

    plugin_cache_dir = None
    if mirror is None or not mirror.unpacked:
        plugin_cache_dir = work_dir / "plugin-cache"
        plugin_cache_dir.mkdir(parents=True, exist_ok=True)

    cli_config_path = work_dir / "terraform.rc"
    cli_config_path.parent.mkdir(parents=True, exist_ok=True)
    cli_config_path.write_text(render_cli_config(mirror, plugin_cache_dir), encoding="utf-8")
    return Toolchain(binary=binary, version=version, mirror=mirror, cli_config_path=cli_config_path, plugin_cache_dir=plugin_cache_dir)
