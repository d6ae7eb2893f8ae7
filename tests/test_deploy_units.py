"""The files that start peercam at boot: the systemd unit and the Dockerfile, checked without
a running systemd or a Docker daemon (neither exists in CI)."""

from __future__ import annotations

import configparser
import fnmatch
import io
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "peercam.service"
PEERCAM = Path(sys.executable).parent / "peercam"  # the console script of this install


def _unit() -> configparser.RawConfigParser:
    # strict: a key given twice would be a second value to systemd, silently one here.
    parser = configparser.RawConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def _docker_command() -> list[str]:
    by_name = _instructions()
    return [*json.loads(by_name["ENTRYPOINT"][0]), *json.loads(by_name["CMD"][0])]


@pytest.fixture(scope="module")
def accepted() -> dict[str, Run]:
    """The unit's ExecStart and the image's ENTRYPOINT + CMD, run with this install's
    ``peercam`` and ``--list-cameras`` appended: every flag is parsed and type-checked, the
    entry point runs, nothing is served. Both at once: each spends seconds importing."""
    commands = {
        "unit": shlex.split(_unit()["Service"]["ExecStart"]),
        "docker": _docker_command(),
    }
    processes = {
        name: subprocess.Popen(
            [str(PEERCAM), *command[1:], "--list-cameras"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, command in commands.items()
    }
    runs = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=60)
        runs[name] = Run(process.returncode, stdout, stderr)
    return runs


def test_the_unit_runs_peercam_sandboxed_in_the_video_group(accepted: dict[str, Run]) -> None:
    service = _unit()["Service"]
    assert service.get("DynamicUser") == "yes" or service.get("User", "root") not in ("root", "0")
    assert "video" in service["SupplementaryGroups"].split()
    assert service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["DeviceAllow"].split()[0] == "char-video4linux"
    assert service["DevicePolicy"] == "closed"  # cameras are the only extra devices
    assert "PrivateDevices" not in service  # it would hide /dev/video*
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "peercam"
    done = accepted["unit"]
    assert done.returncode == 0, done.stderr
    assert "--source auto would use" in done.stdout
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs Debian's systemd")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """No running systemd is needed (nor a network): verify loads the unit file on its own.
    Only ExecStart's path is replaced, by this install's peercam: verify checks it exists."""
    service = _unit()["Service"]
    installed = shlex.split(service["ExecStart"])[0]
    text = UNIT.read_text()
    assert text.count(installed) == 1
    copy = tmp_path / "peercam.service"
    copy.write_text(text.replace(installed, str(PEERCAM)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def _dockerfile() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((ROOT / "Dockerfile").read_bytes()))


def _instructions() -> dict[str, list[str]]:
    """The Dockerfile's instructions' values by instruction name, in order."""
    by_name: dict[str, list[str]] = {}
    for instruction in _dockerfile().structure:
        by_name.setdefault(instruction["instruction"], []).append(instruction["value"])
    return by_name


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns
    )


def test_the_dockerfile_copies_what_peercam_needs_from_the_context() -> None:
    """The repository root is the build context: every COPY source exists there, is not
    excluded by .dockerignore, and together they hold everything the package and page need."""
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: set[str] = set()
    for instruction in _dockerfile().structure:
        if instruction["instruction"] != "COPY":
            continue
        *sources, _destination = shlex.split(instruction["value"])
        for source in sources:
            assert not source.startswith("--"), "no COPY --from/--chown: one stage, the context"
            name = source.rstrip("/")
            assert (ROOT / name).exists(), source
            assert not _ignored(name, ignore), f"{source} is excluded by .dockerignore"
            copied.add(name)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {"pyproject.toml", project["project"]["readme"], "static"}
    needed |= {f"{module}.py" for module in setuptools["py-modules"]}
    needed |= set(setuptools["packages"])
    assert needed <= copied, needed - copied
    assert _ignored(".venv", ignore)
    assert _ignored(".git", ignore)


def test_the_dockerfile_runs_the_peercam_console_script_as_non_root(
    accepted: dict[str, Run],
) -> None:
    parser = _dockerfile()
    image, _, tag = parser.baseimage.partition(":")
    assert image == "python"
    assert "slim" in tag
    assert "bookworm" in tag  # Debian 12, as the machines the tests run on
    by_name = _instructions()
    assert any("pip install" in run for run in by_name["RUN"])
    (user,) = by_name["USER"]
    assert user not in ("root", "0")
    (entrypoint,) = by_name["ENTRYPOINT"]
    (cmd,) = by_name["CMD"]
    # Exec form (JSON): signals reach peercam itself, not a shell.
    assert json.loads(entrypoint) == ["peercam"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["peercam"] == "server:main"
    args = json.loads(cmd)
    port = args[args.index("--port") + 1]
    assert by_name["EXPOSE"] == [f"{port}/tcp"]
    done = accepted["docker"]
    assert done.returncode == 0, done.stderr
    assert "--source auto would use" in done.stdout
