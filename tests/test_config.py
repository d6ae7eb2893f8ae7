"""Settings from flags, PEERCAM_* variables and a TOML file: precedence, and every refusal.

The layering (signaling/options.py) works on any argparse parser: most tests drive it with a
small parser of the same kinds of flags as peercam's; a few run ``server.py --check-config``,
the real parser, end to end (in parallel: each start imports the media stack).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from signaling.config import split_source
from signaling.options import OptionError, layered

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    """Flags of each kind peercam has: int, float, choices, switch, repeatable, secret."""
    p = argparse.ArgumentParser(prog="peercam", exit_on_error=False)
    p.add_argument("--source", action="append")
    p.add_argument("--config", type=Path)
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--fps", type=float)
    p.add_argument("--codec", choices=["auto", "vp8", "h264"], default="auto")
    p.add_argument("--no-auth", action="store_true")
    p.add_argument("--ice-server", action="append", default=[])
    p.add_argument("--token", default=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO"])
    return p


def _layered(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    return layered(_parser(), _parser(), argv, env or {}).namespace()


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peercam.toml"
    path.write_text(text)
    return path


def test_flags_beat_variables_beat_the_file_beat_defaults(tmp_path: Path) -> None:
    """The documented order: what is typed now wins over what the environment and file say."""
    config = _file(tmp_path, 'port = 1111\nfps = 10\ncodec = "vp8"\nno-auth = true\n')
    env = {"PEERCAM_PORT": "2222", "PEERCAM_FPS": "20"}
    args = _layered(["--config", str(config), "--port", "3333"], env)
    assert args.port == 3333  # flag over variable and file
    assert args.fps == 20.0  # variable over file
    assert args.codec == "vp8"  # file over default
    assert args.no_auth is True
    assert args.log_level == "INFO"  # default
    assert _layered([]).port == 9000


def test_variables_take_switches_lists_and_the_older_log_name() -> None:
    """Unit files and containers set variables; their forms must be the obvious ones."""
    args = _layered(
        [],
        {
            "PEERCAM_NO_AUTH": "yes",
            "PEERCAM_ICE_SERVER": "stun:a.example:3478, stun:b.example:3478",
            "PEERCAM_TOKEN": "from-the-environment",
            "PEERCAM_LOG": "DEBUG",
            "PEERCAM_SOURCE": "rtsp://u:p@h/x?a=b,c",  # one camera: not split at commas
        },
    )
    assert args.no_auth is True
    assert args.ice_server == ["stun:a.example:3478", "stun:b.example:3478"]
    assert args.token == "from-the-environment"
    assert args.log_level == "DEBUG"
    assert args.source == ["rtsp://u:p@h/x?a=b,c"]
    assert _layered([], {"PEERCAM_NO_AUTH": "0"}).no_auth is False
    assert _layered([], {"PEERCAM_PORT": ""}).port == 9000  # set but empty: unset


def test_unknown_variables_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A typo in a variable must be visible, but not stop a camera from starting."""
    with caplog.at_level(logging.WARNING):
        args = _layered([], {"PEERCAM_PROT": "1", "PEERCAM_CHROMIUM": "/x", "OTHER": "1"})
    assert args.port == 9000
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["ignoring PEERCAM_PROT: peercam has no such setting"]


def test_cameras_from_the_file_and_flags_replacing_them(tmp_path: Path) -> None:
    """[cameras.NAME] tables name the cameras; --source or PEERCAM_SOURCE replace them all."""
    config = _file(
        tmp_path,
        '[cameras.yard]\nsource = "test"\nwidth = 320\n\n'
        '[cameras.gate]\nsource = "rtsp://h/x"\ncodec = "h264"\nfps = 15\n',
    )
    options = layered(_parser(), _parser(), ["--config", str(config)], {})
    assert [(c.name, c.values) for c in options.cameras] == [
        ("yard", {"source": "test", "width": 320}),
        ("gate", {"source": "rtsp://h/x", "codec": "h264", "fps": 15}),
    ]
    for argv, env in ((["--source", "test"], {}), ([], {"PEERCAM_SOURCE": "test"})):
        options = layered(_parser(), _parser(), ["--config", str(config), *argv], env)
        assert options.cameras == []
        assert options.namespace().source == ["test"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("prot = 1\n", "peercam.toml: prot: unknown key"),
        ('port = "9000"\n', "peercam.toml: port: expected an integer, got '9000'"),
        ("port = 1.5\n", "peercam.toml: port: expected an integer"),
        ("fps = true\n", "peercam.toml: fps: expected an integer or a number"),
        ('codec = "vp9"\n', "peercam.toml: codec: 'vp9' is not one of auto, vp8, h264"),
        ('no-auth = "yes"\n', "peercam.toml: no-auth: expected true or false"),
        ("ice-server = [1]\n", "peercam.toml: ice-server: expected a string or a list"),
        ("port = \n", "peercam.toml: not valid TOML"),
        ("cameras = 1\n", "peercam.toml: cameras: expected [cameras.NAME] tables"),
        ('[cameras.a]\nsource = "test"\nzoom = 2\n', "peercam.toml: cameras.a.zoom: unknown key"),
        ("[cameras.a]\nwidth = 320\n", "peercam.toml: cameras.a: no source"),
        ('[cameras.a]\nsource = "test"\nwidth = "320"\n', "cameras.a.width: '320' has the wrong"),
        (
            'source = "test"\n[cameras.a]\nsource = "test"\n',
            "peercam.toml: source: give either source or [cameras.NAME] tables",
        ),
    ],
)
def test_the_file_refuses_unknown_keys_and_bad_values(
    tmp_path: Path, text: str, reason: str
) -> None:
    """A mistake in the file is refused at start, naming the file, the key and why."""
    config = _file(tmp_path, text)
    with pytest.raises(OptionError) as refused:
        _layered(["--config", str(config)])
    assert str(refused.value).startswith(str(tmp_path) + "/")
    assert reason in str(refused.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="cannot read it"):
        _layered(["--config", str(tmp_path / "nowhere.toml")])


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"PEERCAM_PORT": "x"}, "PEERCAM_PORT: 'x' is not a valid int"),
        ({"PEERCAM_FPS": "fast"}, "PEERCAM_FPS: 'fast' is not a valid float"),
        ({"PEERCAM_CODEC": "vp9"}, "PEERCAM_CODEC: 'vp9' is not one of auto, vp8, h264"),
        ({"PEERCAM_NO_AUTH": "maybe"}, "PEERCAM_NO_AUTH: 'maybe' is not one of 1, true"),
        ({"PEERCAM_LOG": "LOUD"}, "PEERCAM_LOG: 'LOUD' is not one of DEBUG, INFO"),
    ],
)
def test_variables_with_bad_values_are_refused(env: dict[str, str], reason: str) -> None:
    """A bad variable is refused like a bad flag, naming the variable."""
    with pytest.raises(OptionError, match=reason):
        _layered([], env)


def test_named_sources_split_only_at_a_name() -> None:
    """NAME=SPEC names a camera; URLs with queries and existing files stay bare specs."""
    assert split_source("yard=test") == ("yard", "test")
    assert split_source("gate=rtsp://u:pw@h/x?a=b") == ("gate", "rtsp://u:pw@h/x?a=b")
    assert split_source("rtsp://user:pw@h/x?a=b") == (None, "rtsp://user:pw@h/x?a=b")
    assert split_source("/videos/a=b.mp4") == (None, "/videos/a=b.mp4")
    assert split_source("Yard=test") == (None, "Yard=test")  # not a name: a (bad) bare spec
    assert split_source("test") == (None, "test")


def test_an_existing_file_with_an_equals_sign_stays_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a=b.mp4").write_bytes(b"")
    assert split_source("a=b.mp4") == (None, "a=b.mp4")


async def _check_config(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "server.py"), "--check-config", *args,
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PEERCAM_")} | (env or {}),
    )  # fmt: skip
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_the_real_cli_layers_refuses_with_the_origin_and_hides_secrets(
    tmp_path: Path,
) -> None:
    """End to end through server.py: per-camera settings from the file, the global flags
    where a camera has none, refusals that name the file and key (exit 2), secrets hidden."""
    good = tmp_path / "good.toml"
    good.write_text(
        "port = 9100\nno-auth = false\nbitrate = 900000\n\n"
        '[cameras.yard]\nsource = "test"\nwidth = 320\nheight = 240\ncodec = "vp8"\n\n'
        '[cameras.gate]\nsource = "rtsp://u:hunter22@10.0.0.5/x?a=b"\nladder = "off"\n'
    )
    bad_port = tmp_path / "port.toml"
    bad_port.write_text("port = 70000\n")
    bad_camera = tmp_path / "camera.toml"
    bad_camera.write_text('[cameras.Yard]\nsource = "test"\n')
    runs = await asyncio.gather(
        _check_config(
            "--config", str(good), "--fps", "12", "--log-format", "json",
            env={"PEERCAM_PORT": "9200", "PEERCAM_TOKEN": "token-from-env-123",
                 "PEERCAM_BOGUS": "1"},
        ),
        _check_config("--config", str(bad_port)),
        _check_config("--config", str(bad_camera)),
    )  # fmt: skip
    (code, out), port, camera = runs
    assert code == 0, out
    assert "port = 9200" in out  # the variable over the file
    assert "token = (set)" in out
    assert "token-from-env-123" not in out
    assert "hunter22" not in out  # a stream's password is not printed
    assert "camera yard: test  size 320x240@12.0 codecs vp8 bitrate 900000" in out
    assert "camera gate: url rtsp://u:***@10.0.0.5/x?a=b size -x-@12.0 codecs vp8,h264" in out
    assert port[0] == 2
    assert f"{bad_port}: port: --port 70000: must be 0-65535" in port[1]
    assert camera[0] == 2
    assert f"{bad_camera}: cameras.Yard: camera name 'Yard'" in camera[1]
    warning = next(line for line in out.splitlines() if "PEERCAM_BOGUS" in line)
    assert "ignoring PEERCAM_BOGUS" in warning  # before logging is set up: plain text
    logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["message"] for r in logged] == ["the configuration is valid: 2 camera(s)"]
    assert logged[0]["levelname"] == "INFO"
