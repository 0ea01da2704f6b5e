"""Static checks of the container setup: docker-compose.yml, Dockerfile and .dockerignore.

No Docker engine is needed: the compose file is validated against the Compose JSON schema
(draft-07) kept in ../shared/data beside the repository, and its commands are parsed with
the project's own command-line parser.
"""

import contextlib
import io
import json
import re
import shlex
import tomllib

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

REPO = ROOT
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SCHEMA_FILE = ROOT.parent / "shared" / "data" / "compose-spec.json"

KNOWN_SUBCOMMANDS = {"up", "worker", "api", "flower", "simulate", "submit", "status"}
APP_SERVICES = ("worker", "api", "flower")
EXPECTED_SUBCOMMAND = {
    "worker": "worker",
    "api": "api",
    "flower": "flower",
    "simulator": "simulate",
}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(argv: list[str], name: str) -> str:
    """Value following `name` in an argv list."""
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _genqueue_services(services: dict) -> dict:
    return {name: svc for name, svc in services.items() if name != "redis"}


def test_compose_file_matches_the_compose_schema(compose: dict) -> None:
    if not SCHEMA_FILE.is_file():
        pytest.skip(f"Compose JSON schema not found at {SCHEMA_FILE} (expected ../shared/data)")
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path)
    )
    messages = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
    assert messages == []


def test_services_are_the_expected_set(services: dict) -> None:
    assert set(services) == {"redis", "worker", "api", "flower", "simulator"}


def test_genqueue_services_share_one_image_built_from_the_root_dockerfile(
    services: dict,
) -> None:
    app = _genqueue_services(services)
    builds = {name: svc.get("build") for name, svc in app.items()}
    images = {name: svc.get("image") for name, svc in app.items()}
    assert builds == dict.fromkeys(app, ".")
    assert len(set(images.values())) == 1
    assert next(iter(images.values()))
    assert DOCKERFILE.is_file()


def test_genqueue_services_share_one_environment(services: dict) -> None:
    app = _genqueue_services(services)
    environments = [svc["environment"] for svc in app.values()]
    assert all(env == environments[0] for env in environments)
    env = environments[0]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["REDIS_URL"].endswith("@redis:6379/0")
    assert set(env) >= {
        "REDIS_URL",
        "RUNPOD_ENDPOINT_URL",
        "RUNPOD_API_KEY",
        "RUNPOD_MAX_CONCURRENCY",
        "GENQUEUE_API_KEYS",
        "FLOWER_BASIC_AUTH",
    }


def test_each_service_runs_its_genqueue_subcommand(services: dict) -> None:
    commands = {name: _argv(svc["command"]) for name, svc in _genqueue_services(services).items()}
    assert {name: argv[:2] for name, argv in commands.items()} == {
        name: ["genqueue", sub] for name, sub in EXPECTED_SUBCOMMAND.items()
    }
    assert {argv[1] for argv in commands.values()} <= KNOWN_SUBCOMMANDS


def test_service_commands_parse_with_the_cli_parser(services: dict) -> None:
    from genqueue.cli.main import build_parser  # lazy: the CLI module is developed separately

    rejected = {}
    for name, svc in _genqueue_services(services).items():
        argv = _argv(svc["command"])
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                build_parser().parse_args(argv[1:])
        except SystemExit:
            rejected[name] = f"{shlex.join(argv)}: {stderr.getvalue().strip()}"
    assert rejected == {}


def test_network_services_bind_all_interfaces_inside_the_container(services: dict) -> None:
    expected_ports = {"api": "8000", "flower": "5555", "simulator": "5000"}
    for name, port in expected_ports.items():
        argv = _argv(services[name]["command"])
        assert (_option(argv, "--host"), _option(argv, "--port")) == ("0.0.0.0", port)


def test_only_api_and_flower_are_published_and_only_on_localhost(services: dict) -> None:
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert published == {"api": ["127.0.0.1:8000:8000"], "flower": ["127.0.0.1:5555:5555"]}


def test_api_healthcheck_polls_healthz_with_python(services: dict) -> None:
    test = services["api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in test[3]
    assert "urllib.request.urlopen" in test[3]


def test_redis_is_persistent_authenticated_and_healthchecked(compose: dict) -> None:
    redis = compose["services"]["redis"]
    argv = _argv(redis["command"])
    assert redis["image"] == "redis:7-alpine"
    assert argv[0] == "redis-server"
    assert _option(argv, "--appendonly") == "yes"
    assert _option(argv, "--appendfsync") == "everysec"
    assert _option(argv, "--maxmemory-policy") == "noeviction"
    assert _option(argv, "--requirepass").startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert "redis-cli ping" in " ".join(_argv(redis["healthcheck"]["test"]))
    assert redis["volumes"] == ["redis-data:/data"]
    assert "redis-data" in compose["volumes"]


def test_app_services_wait_for_a_healthy_redis(services: dict) -> None:
    depends = {name: services[name]["depends_on"] for name in APP_SERVICES}
    assert depends == {name: {"redis": {"condition": "service_healthy"}} for name in APP_SERVICES}


def test_secrets_are_required_and_optional_values_default_to_empty(compose_text: str) -> None:
    for required in (
        "${REDIS_PASSWORD:?",
        "${GENQUEUE_API_KEYS:?",
        "${FLOWER_BASIC_AUTH:?",
        "${RUNPOD_ENDPOINT_URL:?",
    ):
        assert required in compose_text
    assert "${RUNPOD_API_KEY:-}" in compose_text
    # A required secret must never be referenced without the `:?` guard.
    unguarded = r"\$\{(REDIS_PASSWORD|GENQUEUE_API_KEYS|FLOWER_BASIC_AUTH|RUNPOD_ENDPOINT_URL)\}"
    assert re.findall(unguarded, compose_text) == []


def test_simulator_only_runs_under_its_profile(services: dict, compose_text: str) -> None:
    profiled = {name: svc["profiles"] for name, svc in services.items() if "profiles" in svc}
    assert profiled == {"simulator": ["simulator"]}
    assert "RUNPOD_ENDPOINT_URL=http://simulator:5000 docker compose --profile simulator up" in (
        compose_text
    )


def test_dockerfile_runs_as_an_unprivileged_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    users = [line.split(None, 1)[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "Dockerfile has no USER line"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == "genqueue"
    assert any(re.search(r"useradd .*--uid 10001\b.* genqueue$", line) for line in lines)


def test_dockerfile_copies_everything_pip_install_needs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = set()
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY "):
            copied.update(src.rstrip("/") for src in line.split()[1:-1])
    assert copied >= {"pyproject.toml", pyproject["project"]["readme"], *packages}


def test_dockerignore_excludes_local_state_but_not_sources() -> None:
    entries = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert entries >= {".git", "tests", ".venv", ".genqueue", ".env"}
    assert {"**/__pycache__", "**/*.pyc"} <= entries
    assert entries.isdisjoint({"worker", "api_producer", "genqueue", "pyproject.toml", "README.md"})
