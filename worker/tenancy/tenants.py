"""Tenants: the named callers of genqueue, each with its keys, share, limits and secret.

Every API key belongs to exactly one tenant. A plain key in ``GENQUEUE_API_KEYS`` (or a digest
in ``GENQUEUE_API_KEY_HASHES``) is a tenant of its own, named ``key-`` + the first 8 hex digits
of its SHA-256. ``GENQUEUE_TENANTS_FILE`` names more::

    # GENQUEUE_TENANTS_FILE=tenants.toml
    [tenants.billing]
    key_hashes = ["9f86d081884c7d65..."]     # SHA-256 hex digests of its keys
    keys_env = "BILLING_API_KEYS"            # and/or a variable holding comma-separated keys
    weight = 2.0                             # its share of a busy endpoint
    max_priority = 7                         # the highest priority it may ask for
    requests_per_minute = 600                # submissions a minute (default: the global limit)
    tokens_per_day = 2_000_000               # prompt + completion tokens a UTC day
    # (0 in either means none: the tenant is suspended, it submits nothing)
    endpoints = ["big", "small"]             # the endpoints it may use (default: all)
    webhook_secret_env = "BILLING_WEBHOOK_SECRET"   # signs its webhooks
    admin = false                            # an operator: reads and cancels everything

An invalid file stops the service at start with the file, line and field at fault; the API
re-reads it when it changes (:class:`TenantsSource`). Tasks sent without a key (a plain Celery
producer, the direct producer) belong to the request's ``tenant`` or to :data:`INTERNAL`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from worker.config.toml_lines import line_of, read_named_tables
from worker.contract import PRIORITY_MAX, TENANT_NAME_PATTERN, GenerationRequest
from worker.errors import SettingsError
from worker.settings import Settings, env_name
from worker.tenancy.tenant_keys import ANONYMOUS as ANONYMOUS
from worker.tenancy.tenant_keys import (
    INTERNAL,
    KEY_TENANT_PREFIX,
    OTHER_LABEL,
    check_key_tenants,
    key_tenant_name,
    parse_key_hash,
    reserved_name,
)
from worker.tenancy.tenant_keys import hash_key as hash_key
from worker.tenancy.tenant_keys import key_tenant as key_tenant

log = logging.getLogger("genqueue.tenants")


def tenant_of(request: GenerationRequest) -> str:
    """The tenant a request belongs to: the one it names, else :data:`INTERNAL`."""
    return request.tenant or INTERNAL


_TENANT_NAME = re.compile(TENANT_NAME_PATTERN)


def tenant_of_message(args: Any, kwargs: Any) -> str:
    """The tenant of a ``genqueue.generate`` message, even one whose request is invalid."""
    raw = args[0] if args and len(args) == 1 else (kwargs or {}).get("request")
    name = raw.get("tenant") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and _TENANT_NAME.match(name) else INTERNAL


class TenantSpec(BaseModel):
    """One ``[tenants.NAME]`` table of the tenants file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=TENANT_NAME_PATTERN)
    key_hashes: tuple[str, ...] = ()
    keys_env: str | None = Field(default=None, min_length=1)
    weight: float = Field(default=1.0, gt=0, le=1000)
    max_priority: int = Field(default=PRIORITY_MAX, ge=0, le=PRIORITY_MAX)
    requests_per_minute: int | None = Field(default=None, ge=0, le=1_000_000)
    tokens_per_day: int | None = Field(default=None, ge=0)
    endpoints: tuple[str, ...] | None = None
    webhook_secret_env: str | None = Field(default=None, min_length=1)
    admin: bool = False


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, TenantSpec] = {}


@dataclass(frozen=True)
class Tenant:
    """A caller of genqueue: its name, its share and limits, and its webhook secret."""

    name: str
    weight: float = 1.0
    max_priority: int = PRIORITY_MAX
    #: ``None``: the global ``GENQUEUE_API_RATE_LIMIT_PER_MINUTE``; 0: none (suspended).
    requests_per_minute: int | None = None
    #: ``None``: no budget; 0: none (suspended).
    tokens_per_day: int | None = None
    #: Endpoint names it may use; ``None``: every one.
    endpoints: frozenset[str] | None = None
    webhook_secret: SecretStr | None = None
    admin: bool = False
    #: Named in the tenants file (its metrics get its name as a label).
    configured: bool = False

    def may_use(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints

    @property
    def suspended_by(self) -> str | None:
        """The limit of 0 that suspends the tenant (0 means none), if one does."""
        if self.requests_per_minute == 0:
            return "requests_per_minute"
        return "tokens_per_day" if self.tokens_per_day == 0 else None


@dataclass(frozen=True)
class Tenants:
    """The tenants of one reading of the configuration.

    :param by_name: every tenant.
    :param by_digest: the tenant of each key's SHA-256 digest.
    """

    by_name: Mapping[str, Tenant] = field(default_factory=dict)
    by_digest: Mapping[bytes, str] = field(default_factory=dict)

    def get(self, name: str) -> Tenant:
        """The tenant ``name``; one with the defaults if it is unknown."""
        found = self.by_name.get(name)
        return found if found is not None else Tenant(name=name)

    def weight_of(self, name: str) -> float:
        """The tenant's share of a busy endpoint (1.0 for an unknown tenant)."""
        found = self.by_name.get(name)
        return found.weight if found is not None else 1.0

    def max_priority_of(self, name: str) -> int:
        return self.get(name).max_priority

    def held_to_tenant(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with its priority at most its tenant's ``max_priority`` (the API refuses
        more; a Celery producer's task is capped by the worker)."""
        highest = self.max_priority_of(tenant_of(request))
        if request.priority <= highest:
            return request
        return request.model_copy(update={"priority": highest})

    def usable(self, request: GenerationRequest, chain: Iterable[str]) -> list[str]:
        """The endpoints of ``chain`` (a request's endpoint and fallbacks) its tenant may use."""
        tenant = self.get(tenant_of(request))
        return [name for name in chain if tenant.may_use(name)]

    def webhook_secret_of(self, name: str) -> SecretStr | None:
        found = self.by_name.get(name)
        return found.webhook_secret if found is not None else None

    def label_of(self, name: str) -> str:
        """The metrics label of ``name``: its own for a configured tenant, else ``other``."""
        found = self.by_name.get(name)
        return name if found is not None and found.configured else OTHER_LABEL

    @property
    def keyed(self) -> bool:
        """Whether any key is configured (else the API is open)."""
        return bool(self.by_digest)


def load_tenants(settings: Settings, environ: Mapping[str, str] | None = None) -> Tenants:
    """The tenants of the settings' keys and of the tenants file; :class:`SettingsError`."""
    env = os.environ if environ is None else environ
    by_name: dict[str, Tenant] = {}
    by_digest: dict[bytes, str] = {}
    plain = [hashlib.sha256(key.get_secret_value().encode()).digest() for key in settings.api_keys]
    hashed = [parse_key_hash(value) for value in settings.api_key_hashes]
    for digest in [*plain, *hashed]:
        name = key_tenant_name(digest)
        by_name.setdefault(name, Tenant(name=name))
        by_digest[digest] = name
    if settings.tenants_file is not None:
        for tenant, digests in _read_file(settings.tenants_file, env):
            by_name[tenant.name] = tenant
            for digest in digests:
                _drop_key_tenant(by_name, by_digest, digest)
                by_digest[digest] = tenant.name
    check_key_tenants(by_digest)
    return Tenants(by_name=by_name, by_digest=by_digest)


def _drop_key_tenant(
    by_name: dict[str, Tenant], by_digest: dict[bytes, str], digest: bytes
) -> None:
    """A key named in the file belongs to the file's tenant, not to one of its own."""
    earlier = by_digest.get(digest)
    alone = earlier is not None and list(by_digest.values()).count(earlier) == 1
    if alone and earlier is not None and earlier.startswith(KEY_TENANT_PREFIX):
        by_name.pop(earlier, None)  # (kept while another key still makes it)


def _read_file(path: Path, env: Mapping[str, str]) -> list[tuple[Tenant, list[bytes]]]:
    parsed, text = read_named_tables(path, "tenants", TenantsFile, env_name("tenants_file"))
    for table, spec in parsed.tenants.items():
        _check_name(path, text, table, spec.name)
    read = [_tenant(path, text, spec, env) for spec in parsed.tenants.values()]
    _check_unique_keys(path, text, read)
    return read


def _check_name(path: Path, text: str, table: str, name: str) -> None:
    if name != table:
        line = line_of(text, ("tenants", table, "name"))
        raise SettingsError(
            f"{path}:{line}: tenants.{table}.name: a tenant is named by its table; leave 'name' out"
        )
    problem = reserved_name(name)
    if problem is not None:
        line = line_of(text, ("tenants", table))
        raise SettingsError(f"{path}:{line}: tenants.{table}: {problem}; choose another name")


def _tenant(
    path: Path, text: str, spec: TenantSpec, env: Mapping[str, str]
) -> tuple[Tenant, list[bytes]]:
    def where(key: str) -> str:
        return f"{path}:{line_of(text, ('tenants', spec.name, key))}: tenants.{spec.name}.{key}"

    digests = [parse_key_hash(value, where("key_hashes")) for value in spec.key_hashes]
    if spec.keys_env is not None:
        value = env.get(spec.keys_env)
        if value is None:
            raise SettingsError(f"{where('keys_env')}: the variable {spec.keys_env} is not set")
        plain = [key.strip() for key in value.split(",") if key.strip()]
        digests += [hashlib.sha256(key.encode()).digest() for key in plain]
    secret = None
    if spec.webhook_secret_env is not None:
        value = env.get(spec.webhook_secret_env)
        if not value:
            raise SettingsError(
                f"{where('webhook_secret_env')}: the variable {spec.webhook_secret_env} is not set"
            )
        secret = SecretStr(value)
    tenant = Tenant(
        name=spec.name,
        weight=spec.weight,
        max_priority=spec.max_priority,
        requests_per_minute=spec.requests_per_minute,
        tokens_per_day=spec.tokens_per_day,
        endpoints=frozenset(spec.endpoints) if spec.endpoints is not None else None,
        webhook_secret=secret,
        admin=spec.admin,
        configured=True,
    )
    return tenant, digests


def _check_unique_keys(path: Path, text: str, read: Iterable[tuple[Tenant, list[bytes]]]) -> None:
    owner: dict[bytes, str] = {}
    for tenant, digests in read:
        for digest in digests:
            other = owner.setdefault(digest, tenant.name)
            if other != tenant.name:
                line = line_of(text, ("tenants", tenant.name, "key_hashes"))
                raise SettingsError(
                    f"{path}:{line}: tenants.{tenant.name}: a key of this tenant is also a key "
                    f"of tenants.{other}; every key belongs to exactly one tenant"
                )


def no_key_error() -> SettingsError:
    """The refusal of an API that must have a key (on a public host) and has none."""
    return SettingsError(
        f"no API key: {env_name('api_keys')}, {env_name('api_key_hashes')} and the tenants "
        "file name none; refusing to serve anyone who can reach the port"
    )


class TenantsSource:
    """The current tenants, read again when the tenants file changes.

    The file's modification time and size are looked at most once per ``check_every_s``; a
    new version that does not load is logged and the previous one kept (a typo never locks
    every caller out), and so is a version with no keys at all where the running one has
    some: with no keys the API lets anyone in, so an emptied file (``cat new > tenants.toml``
    caught half-way, the last key removed) never opens it. A reload never raises: the tenants
    are read in the middle of requests and tasks. Keys in environment variables change only
    with a restart.
    """

    def __init__(
        self,
        settings: Settings,
        check_every_s: float = 1.0,
        require_keys: bool = False,
        checks_keys: bool = True,
    ) -> None:
        """:param require_keys: refuse to start without a key (an API on a public host).
        :param checks_keys: the keys are checked here (the API; a worker's are not): a version
            with no keys where the running one has some is refused."""
        self._settings = settings
        self._checks_keys = checks_keys
        self._check_every_s = check_every_s
        self._stamp = self._file_stamp()
        self._tenants = load_tenants(settings)  # an invalid file stops the service at start
        if require_keys and not self._tenants.keyed:
            raise no_key_error()
        self._checked_at = time.monotonic()

    def current(self) -> Tenants:
        if self._settings.tenants_file is None:
            return self._tenants
        now = time.monotonic()
        if now - self._checked_at < self._check_every_s:
            return self._tenants
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self._reload()
        return self._tenants

    def _reload(self) -> None:
        try:
            tenants = load_tenants(self._settings)
        except SettingsError as err:
            log.error("tenants file not re-read, the previous version stays: %s", err)
            return
        except Exception as err:  # a request or a task never fails of an edit
            # Its type only: an exception's text or arguments may carry the file.
            log.error(
                "tenants file not re-read, the previous version stays: %s", type(err).__name__
            )
            return
        problem = self._lowers_protection(tenants)
        if problem is not None:
            log.error("tenants file not re-read, the previous version stays: %s", problem)
            return
        self._tenants = tenants
        log.info("tenants file re-read: %d tenants", len(self._tenants.by_name))

    def _lowers_protection(self, new: Tenants) -> str | None:
        """Why ``new`` may not replace the running version, if it may not: an emptied file."""
        if self._checks_keys and self._tenants.keyed and not new.keyed:
            return (
                "it has no keys, and with none the API would let every caller in as an admin; "
                f"to open it, restart it without keys (on loopback, or with "
                f"{env_name('api_insecure_no_auth')}=true)"
            )
        if _named(self._tenants) and not _named(new):
            return "it names no tenant where the running version names some; restart to drop all"
        return None

    def _file_stamp(self) -> tuple[int, int] | None:
        path = self._settings.tenants_file
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size


def _named(tenants: Tenants) -> bool:
    """Whether the tenants file names any tenant (their limits and endpoints hold)."""
    return any(tenant.configured for tenant in tenants.by_name.values())
