"""Discovery: accounts, services and deployment files of a repository, split into shards.

Discovery reads files only; it never touches the cloud. Problems in what it reads are
collected as diagnostics (file, line, column, message) so that one run reports all of them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import hcl2
import jsonschema
from lark.exceptions import LarkError

from .errors import ConfigurationError
from .settings import Settings, load_schema
from .tfvars import Diagnostic, TfvarsDocument, TfvarsSyntaxError, load_tfvars

logger = logging.getLogger(__name__)

ACCOUNT_FILE_NAME = "account.json"
SERVICE_FILE_NAME = "service.json"
SERVICE_SCHEMA_FILE_NAME = "schema.json"

# Keys every shard of a deployment file receives, whatever service it belongs to.
COMMON_KEYS = ("account_id", "region", "project", "environment", "tags")

# Variables every service module declares: the common keys and the repository root, which
# modules use to read files that deployment files name relative to it.
MODULE_COMMON_VARIABLES = COMMON_KEYS + ("repo_root",)


@dataclass(frozen=True)
class Account:
    name: str
    account_id: str
    environment: str
    regions: tuple[str, ...]
    default_region: str
    deploy_role_arn: str
    path: str
    description: str = ""


@dataclass(frozen=True)
class Package:
    key: str
    source_field: str


@dataclass(frozen=True)
class Service:
    name: str
    keys: tuple[str, ...]
    depends_on: tuple[str, ...]
    is_global: bool
    packages: tuple[Package, ...]
    module_dir: Path
    description: str = ""
    value_schema: dict | None = field(default=None, compare=False, hash=False)
    references: tuple[dict, ...] = field(default=(), compare=False, hash=False)


@dataclass(frozen=True)
class DeploymentFile:
    path: str  # relative to the repository root, with forward slashes
    account: Account
    name: str  # path inside the account folder without ".tfvars", e.g. "payments"
    project: str
    region: str
    document: TfvarsDocument = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.account.name}/{self.name}"


@dataclass(frozen=True)
class Shard:
    deployment: DeploymentFile
    service: Service
    values: dict = field(compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.deployment.id}/{self.service.name}"

    @property
    def account(self) -> Account:
        return self.deployment.account

    @property
    def account_id(self) -> str:
        return self.deployment.account.account_id

    @property
    def region(self) -> str:
        return self.deployment.region

    @property
    def project(self) -> str:
        return self.deployment.project

    @property
    def environment(self) -> str:
        return str(self.values.get("environment") or self.deployment.account.environment)

    @property
    def state_key(self) -> str:
        return state_key(self.service.name, self.account_id, self.region, self.project)


@dataclass
class Inventory:
    """Everything discovery found, with the problems it met on the way."""

    accounts: dict[str, Account]
    services: dict[str, Service]
    deployments: list[DeploymentFile]
    shards: list[Shard]
    diagnostics: list[Diagnostic]

    def shard(self, shard_id: str) -> Shard:
        for candidate in self.shards:
            if candidate.id == shard_id:
                return candidate
        raise KeyError(shard_id)


def state_key(service: str, account_id: str, region: str, project: str) -> str:
    """Return the state object key of one shard: ``<service>/<account_id>/<region>/<project>/terraform.tfstate``."""
    return f"{service}/{account_id}/{region}/{project}/terraform.tfstate"


def relative_path(path: Path, repo_root: Path) -> str:
    return path.resolve().relative_to(repo_root).as_posix()


def _schema_problems(schema_name: str, data: object) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    return sorted(validator.iter_errors(data), key=lambda error: list(error.path))


def load_accounts(settings: Settings) -> tuple[dict[str, Account], list[Diagnostic]]:
    """Read every ``Accounts/<name>/account.json``; invalid ones become diagnostics."""
    accounts: dict[str, Account] = {}
    diagnostics: list[Diagnostic] = []
    if not settings.accounts_dir.is_dir():
        raise ConfigurationError(
            f"accounts folder {settings.paths.accounts}/ not found under {settings.repo_root}; "
            "run the command from the repository root or set paths.accounts in orchestrator.toml"
        )

    for account_dir in sorted(p for p in settings.accounts_dir.iterdir() if p.is_dir()):
        account_file = account_dir / ACCOUNT_FILE_NAME
        shown_path = relative_path(account_file, settings.repo_root)
        if not account_file.exists():
            if any(account_dir.rglob("*.tfvars")):
                diagnostics.append(Diagnostic(shown_path, 1, 1, "account.json is missing; every account folder needs one (see the other accounts for its fields)"))
            continue

        try:
            data = json.loads(account_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            diagnostics.append(Diagnostic(shown_path, error.lineno, error.colno, f"invalid JSON: {error.msg}"))
            continue

        problems = _schema_problems("account.schema.json", data)
        for problem in problems:
            where = ".".join(map(str, problem.path)) or "(top level)"
            diagnostics.append(Diagnostic(shown_path, 1, 1, f"{where}: {problem.message}"))
        if problems:
            continue

        if data["name"] != account_dir.name:
            diagnostics.append(Diagnostic(shown_path, 1, 1, f"name {data['name']!r} differs from the folder name {account_dir.name!r}; make them equal"))
            continue
        if data["default_region"] not in data["regions"]:
            diagnostics.append(Diagnostic(shown_path, 1, 1, f"default_region {data['default_region']!r} is not in regions {data['regions']}"))
            continue

        accounts[account_dir.name] = Account(
            name=data["name"],
            account_id=data["account_id"],
            environment=data["environment"],
            regions=tuple(data["regions"]),
            default_region=data["default_region"],
            deploy_role_arn=data["deploy_role_arn"],
            path=shown_path,
            description=data.get("description", ""),
        )

    seen_ids: dict[str, str] = {}
    for account in accounts.values():
        if account.account_id in seen_ids:
            diagnostics.append(Diagnostic(account.path, 1, 1, f"account_id {account.account_id} is also used by {seen_ids[account.account_id]}; each account folder must have its own id"))
        seen_ids.setdefault(account.account_id, account.path)
    return accounts, diagnostics


def load_services(settings: Settings) -> dict[str, Service]:
    """Read every ``modules/<service>/service.json``; a broken descriptor stops the run."""
    services: dict[str, Service] = {}
    if not settings.modules_dir.is_dir():
        raise ConfigurationError(f"modules folder {settings.paths.modules}/ not found under {settings.repo_root}")

    for module_dir in sorted(p for p in settings.modules_dir.iterdir() if p.is_dir()):
        descriptor_path = module_dir / SERVICE_FILE_NAME
        if not descriptor_path.exists():
            continue
        shown_path = relative_path(descriptor_path, settings.repo_root)
        try:
            data = json.loads(descriptor_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{shown_path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}") from error
        problems = _schema_problems("service.schema.json", data)
        if problems:
            details = "; ".join(f"{'.'.join(map(str, p.path)) or '(top level)'}: {p.message}" for p in problems)
            raise ConfigurationError(f"{shown_path}: invalid service descriptor: {details}")
        if data["name"] != module_dir.name:
            raise ConfigurationError(f"{shown_path}: name {data['name']!r} differs from the folder name {module_dir.name!r}")

        value_schema = None
        schema_path = module_dir / SERVICE_SCHEMA_FILE_NAME
        if schema_path.exists():
            try:
                value_schema = json.loads(schema_path.read_text(encoding="utf-8"))
                jsonschema.Draft202012Validator.check_schema(value_schema)
            except (json.JSONDecodeError, jsonschema.SchemaError) as error:
                raise ConfigurationError(f"{relative_path(schema_path, settings.repo_root)}: invalid JSON Schema: {error}") from error

        check_module_variables(module_dir, data["keys"], settings.repo_root, settings.work_dir / "cache" / "module-variables.json")
        services[data["name"]] = Service(
            name=data["name"],
            keys=tuple(data["keys"]),
            depends_on=tuple(data["depends_on"]),
            is_global=bool(data.get("global", False)),
            packages=tuple(Package(**entry) for entry in data.get("packages", [])),
            module_dir=module_dir,
            description=data.get("description", ""),
            value_schema=value_schema,
            references=tuple(data.get("references", [])),
        )

    _check_service_graph(services)
    return services


_VARIABLE_BLOCK = re.compile(r'^\s*variable\s+"([^"]+)"\s*\{', re.MULTILINE)


def _variables_in_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        document = hcl2.loads(text)
    except (LarkError, ValueError) as error:
        # python-hcl2 rejects some files Terraform accepts, and Terraform is the reference: fall
        # back to the block headers, and leave real syntax errors to terraform init.
        logger.debug("python-hcl2 could not parse %s (%s); reading variable blocks by their headers", path, error)
        return sorted(set(_VARIABLE_BLOCK.findall(text)))
    return sorted(name.strip('"') for block in document.get("variable", []) for name in block)


def module_variables(module_dir: Path, cache_file: Path | None = None) -> set[str]:
    """Return the names of the variables declared in a module's ``*.tf`` files (read with python-hcl2).

    python-hcl2 needs about 0.2 s per file, so results are cached in ``cache_file`` by the
    sha256 of each file's content.
    """
    cache: dict[str, list[str]] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            cache = {}

    names: set[str] = set()
    changed = False
    for path in sorted(module_dir.glob("*.tf")):
        content = path.read_bytes()
        if b"variable" not in content:
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest not in cache:
            cache[digest] = _variables_in_file(path)
            changed = True
        names.update(cache[digest])

    if changed and cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
    return names


def check_module_variables(module_dir: Path, keys: list[str], repo_root: Path, cache_file: Path | None = None) -> None:
    """Raise when a module does not declare a variable for each key it owns and each common one.

    Terraform only warns about values for undeclared variables, so without this check a
    service's values would be dropped silently.
    """
    declared = module_variables(module_dir, cache_file)
    missing = [name for name in (*MODULE_COMMON_VARIABLES, *keys) if name not in declared]
    if missing:
        shown = relative_path(module_dir, repo_root)
        raise ConfigurationError(f"{shown}/ declares no variable for {', '.join(missing)}; add a variable block for each (every module declares {', '.join(MODULE_COMMON_VARIABLES)} and the keys in its service.json)")


def _check_service_graph(services: dict[str, Service]) -> None:
    owners: dict[str, str] = {}
    for service in services.values():
        for key in service.keys:
            if key in COMMON_KEYS:
                raise ConfigurationError(f"service {service.name} claims the common key {key!r}; common keys go to every service")
            if key in owners:
                raise ConfigurationError(f"services {owners[key]} and {service.name} both claim the key {key!r}; one key belongs to one service")
            owners[key] = service.name
        for prerequisite in service.depends_on:
            if prerequisite not in services:
                raise ConfigurationError(f"service {service.name} depends on unknown service {prerequisite!r}; known: {', '.join(sorted(services))}")

    # Depth-first search for a cycle, so that a bad descriptor fails here and not as a stuck run.
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = trail[trail.index(name):] + [name]
            raise ConfigurationError(f"service dependency cycle: {' -> '.join(cycle)}")
        state[name] = "active"
        for prerequisite in services[name].depends_on:
            visit(prerequisite, trail + [name])
        state[name] = "done"

    for name in services:
        visit(name, [])


def find_deployment_files(settings: Settings, accounts_dir: Path | None = None) -> list[Path]:
    """Return every ``*.tfvars`` below the accounts folder, sorted, without following links out."""
    root = accounts_dir or settings.accounts_dir
    return sorted(path for path in root.rglob("*.tfvars") if path.is_file())


def load_deployment(path: Path, account: Account, settings: Settings) -> tuple[DeploymentFile | None, list[Diagnostic]]:
    """Parse one deployment file and resolve its project and region."""
    shown_path = relative_path(path, settings.repo_root)
    try:
        document = load_tfvars(path)
    except TfvarsSyntaxError as error:
        return None, [Diagnostic(shown_path, d.line, d.column, d.message) for d in error.diagnostics]

    document.path = shown_path
    values = document.values
    diagnostics: list[Diagnostic] = []
    name = path.relative_to(settings.accounts_dir / account.name).with_suffix("").as_posix()

    project = values.get("project", path.stem)
    if not isinstance(project, str) or not project:
        position = document.key_position("project")
        diagnostics.append(Diagnostic(shown_path, position.line, position.column, "project must be a non-empty string"))
        project = path.stem

    region = values.get("region", account.default_region)
    if not isinstance(region, str):
        position = document.key_position("region")
        diagnostics.append(Diagnostic(shown_path, position.line, position.column, "region must be a string such as \"eu-west-1\""))
        region = account.default_region

    deployment = DeploymentFile(path=shown_path, account=account, name=name, project=project, region=region, document=document)
    return deployment, diagnostics


def split_into_shards(deployment: DeploymentFile, services: dict[str, Service], repo_root: Path) -> tuple[list[Shard], list[Diagnostic]]:
    """Route the top-level keys of a deployment file to services; one shard per service used."""
    values = deployment.document.values
    owner_of = {key: service for service in services.values() for key in service.keys}
    diagnostics: list[Diagnostic] = []
    keys_by_service: dict[str, list[str]] = {}

    for key in values:
        if key in COMMON_KEYS:
            continue
        service = owner_of.get(key)
        if service is None:
            position = deployment.document.key_position(key)
            known = sorted(set(owner_of) | set(COMMON_KEYS))
            diagnostics.append(Diagnostic(deployment.path, position.line, position.column, unknown_key_message(key, known)))
            continue
        keys_by_service.setdefault(service.name, []).append(key)

    common = {
        "account_id": str(values.get("account_id", deployment.account.account_id)),
        "region": deployment.region,
        "project": deployment.project,
        "environment": values.get("environment", deployment.account.environment),
        "tags": values.get("tags", {}),
        "repo_root": str(repo_root),
    }
    shards = []
    for service_name in sorted(keys_by_service):
        shard_values = dict(common)
        for key in keys_by_service[service_name]:
            shard_values[key] = values[key]
        shards.append(Shard(deployment=deployment, service=services[service_name], values=shard_values))
    return shards, diagnostics


def unknown_key_message(key: str, known: list[str]) -> str:
    suggestion = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {suggestion[0]}?" if suggestion else ""
    return f"{key} is not a known key{hint} Known keys: {', '.join(known)}."


def discover(settings: Settings) -> Inventory:
    """Find accounts, services, deployment files and shards; collect every problem met."""
    accounts, diagnostics = load_accounts(settings)
    services = load_services(settings)
    deployments: list[DeploymentFile] = []
    shards: list[Shard] = []

    for path in find_deployment_files(settings):
        relative = path.relative_to(settings.accounts_dir)
        if len(relative.parts) < 2:
            diagnostics.append(Diagnostic(relative_path(path, settings.repo_root), 1, 1, "deployment files belong in an account folder: Accounts/<account>/<name>.tfvars"))
            continue
        account = accounts.get(relative.parts[0])
        if account is None:
            continue  # the account's own diagnostic already explains why

        deployment, file_diagnostics = load_deployment(path, account, settings)
        diagnostics.extend(file_diagnostics)
        if deployment is None:
            continue
        deployments.append(deployment)
        file_shards, routing_diagnostics = split_into_shards(deployment, services, settings.repo_root)
        diagnostics.extend(routing_diagnostics)
        shards.extend(file_shards)

    return Inventory(accounts=accounts, services=services, deployments=deployments, shards=shards, diagnostics=diagnostics)
