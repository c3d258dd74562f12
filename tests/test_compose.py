"""docker-compose.yml, Dockerfile and .env.example checked statically (no Docker engine runs here):
every image, command, module, flag and environment variable they name exists in the project."""

import re
import shlex
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("setup", "web", "worker", "beat")
THIRD_PARTY_IMAGES = {"postgres:16", "redis:7"}
# Read by boto3 / the Postgres image themselves rather than by our settings.
STANDARD_VARS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
POSTGRES_VARS = {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}


def settings_vars():
    text = (ROOT / "imdsweb" / "settings.py").read_text()
    return set(re.findall(r"env(?:\.\w+)?\(\s*\"([A-Z_]+)\"", text))


def help_text(argv):
    result = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_expected_services_and_shared_definition():
    assert set(SERVICES) == {"postgres", "redis", "simulator", "setup", "web", "worker", "beat"}
    first = SERVICES["web"]
    for name in APP_SERVICES:
        service = SERVICES[name]
        assert service["image"] == first["image"] and service["build"] == first["build"]
        assert service["environment"] == first["environment"], f"{name} must share the app environment"
    assert len({str(SERVICES[name]["command"]) for name in APP_SERVICES}) == len(APP_SERVICES)


def test_images_are_built_here_or_well_known():
    for name, service in SERVICES.items():
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").exists()
        else:
            assert service["image"] in THIRD_PARTY_IMAGES, name


def test_dockerfile_copies_existing_paths_and_installs_from_registries():
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), source
    assert not re.search(r"pip install[^\n]*(git\+|https?://)", text)
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)


def command_of(name):
    command = SERVICES[name]["command"]
    return command if isinstance(command, list) else shlex.split(command)


@pytest.mark.parametrize("name", ["simulator", "setup", "web", "worker", "beat"])
def test_every_command_program_module_and_flag_exists(name):
    argv = command_of(name)
    if argv[:2] == ["python", "-m"]:
        assert find_spec(argv[2]) is not None, argv[2]
        program = ["-m", argv[2]]
    elif argv[0] == "python":
        assert (ROOT / argv[1]).exists(), argv[1]
        flags = [arg for arg in argv[2:] if arg.startswith("--")]
        assert all(flag in (ROOT / argv[1]).read_text() for flag in flags)
        return
    elif argv[0] == "gunicorn":
        assert find_spec(argv[1]) is not None and find_spec("gunicorn") is not None
        program = ["-m", "gunicorn"]
    elif argv[0] == "celery":
        assert argv[1:3] == ["-A", "imdsweb"] and find_spec("imdsweb.celery") is not None
        program = ["-m", "celery", "-A", "imdsweb", argv[3]]
    else:
        pytest.fail(f"unexpected program {argv[0]}")
    available = help_text(program)
    for flag in [arg for arg in argv if arg.startswith("--")]:
        assert flag in available, f"{name}: {flag} is not an option of {' '.join(program)}"


def test_environment_variables_are_ones_the_project_reads():
    known = settings_vars() | STANDARD_VARS
    for name in APP_SERVICES:
        for variable in SERVICES[name]["environment"]:
            assert variable in known, f"{name}: {variable} is read by nothing"
    assert set(SERVICES["postgres"]["environment"]) <= POSTGRES_VARS
    example = re.findall(r"^#?\s*([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M)
    assert example and set(example) <= known, set(example) - known


def test_services_wait_for_healthy_dependencies():
    for name, service in SERVICES.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in SERVICES
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{name} waits on {dependency}, which has no healthcheck"
            else:
                assert rule["condition"] == "service_completed_successfully"
    for name in ("web", "worker", "beat"):
        deps = SERVICES[name]["depends_on"]
        assert {"postgres", "redis", "setup"} <= set(deps)
        assert deps["setup"]["condition"] == "service_completed_successfully"  # migrations ran first


def test_healthchecks_and_volumes_are_consistent():
    for name, service in SERVICES.items():
        check = service.get("healthcheck")
        if check and check["test"][1] == "python":
            code = check["test"][3]
            compile(code, name, "exec")
            path = re.search(r"127\.0\.0\.1:\d+(/[^']*)", code).group(1)
            assert path in ("/_imdssim/health", "/accounts/login/")
    declared = set(COMPOSE["volumes"])
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in declared
