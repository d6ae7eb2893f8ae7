"""Where a setting comes from: flags > ``PEERCAM_<FLAG>`` variables > the TOML file > defaults.

:func:`layered` reads the three layers through one argparse parser, so every flag is also a
variable and a key, with the same types and choices, and nothing is listed twice. Values keep
their origin (``--port``, ``PEERCAM_PORT``, ``peercam.toml: port``), so a refusal names it.

The file (``--config FILE``)::

    port = 9443
    no-auth = false            # a flag's name, with - or _
    ice-server = ["stun:stun.example.org:3478"]

    [cameras.door]             # one table per camera: /cam/door/
    source = "rtsp://10.0.0.5/stream"
    width = 1280               # optional: width, height, fps, codec, ladder, bitrate

Variables: upper case, ``-`` as ``_`` (``PEERCAM_MAX_PER_ADDRESS``); switches take
1/0, true/false, yes/no, on/off; repeatable flags take comma-separated values (one
``PEERCAM_SOURCE`` camera: name several in the file or with flags).
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_PREFIX = "PEERCAM_"
#: Variables that are not flags but are peercam's: no warning for them.
KNOWN_OTHER_VARIABLES = frozenset(
    {
        "PEERCAM_CONFIG",
        "PEERCAM_LOG",
        "PEERCAM_CHROMIUM",
        "PEERCAM_NETLAB_NAMESPACE",
        "PEERCAM_VENV",
    }
)
#: Keys of a ``[cameras.NAME]`` table and the types they take.
CAMERA_KEYS: dict[str, tuple[type, ...]] = {
    "source": (str,),
    "width": (int,),
    "height": (int,),
    "fps": (int, float),
    "codec": (str,),
    "ladder": (str,),
    "bitrate": (int,),
}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class OptionError(ValueError):
    """A setting refused, with where it came from and why."""


@dataclass(frozen=True, slots=True)
class CameraTable:
    """A ``[cameras.NAME]`` table of the file, its values type-checked."""

    name: str
    values: dict[str, Any]
    origin: str


@dataclass
class Layered:
    """The settings, each from the strongest layer that has it, and where it came from."""

    values: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)
    cameras: list[CameraTable] = field(default_factory=list)
    #: Whether cameras came from flags or a variable (they then replace the file's).
    sources_given: bool = False

    def namespace(self) -> argparse.Namespace:
        return argparse.Namespace(**self.values)

    def origin(self, dest: str) -> str:
        """``--port``, ``PEERCAM_PORT`` or ``FILE: port``: where ``dest`` was set."""
        return self.origins.get(dest, "--" + dest.replace("_", "-"))


def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in parser._actions  # argparse has no public list of its actions
        if a.option_strings and a.dest not in ("help", "config")
    }


def _convert_text(action: argparse.Action, text: str, where: str) -> Any:
    """A variable's text → the flag's value (its type, choices; lists for repeatable flags)."""
    if isinstance(action, argparse._StoreTrueAction):
        lowered = text.strip().lower()
        if lowered in TRUE:
            return True
        if lowered in FALSE:
            return False
        raise OptionError(f"{where}: {text!r} is not one of {', '.join(TRUE + FALSE)}")
    if isinstance(action, argparse._AppendAction):
        parts = [text] if action.dest == "source" else text.split(",")
        return [_one(action, p.strip(), where) for p in parts if p.strip()]
    return _one(action, text, where)


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    convert: Callable[[Any], Any] | None = action.type  # type: ignore[assignment]
    if convert is not None:
        try:
            value = convert(value)
        except (TypeError, ValueError):
            name = getattr(convert, "__name__", "value")
            raise OptionError(f"{where}: {value!r} is not a valid {name}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise OptionError(f"{where}: {value!r} is not one of {choices}")
    return value


def _convert_toml(action: argparse.Action, value: Any, where: str) -> Any:
    """A file's value → the flag's value; TOML types are checked, not guessed from text."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise OptionError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise OptionError(f"{where}: expected a string or a list of strings")
        return [_one(action, v, where) for v in items]
    expected: tuple[type, ...] = (str,)
    if action.type is int:
        expected = (int,)
    elif action.type is float:
        expected = (int, float)
    if isinstance(value, bool) or not isinstance(value, expected):
        names = " or ".join("a number" if t is float else t.__name__ for t in expected)
        names = names.replace("int", "an integer").replace("str", "a string")
        raise OptionError(f"{where}: expected {names}, got {value!r}")
    return _one(action, value if action.type is not None else str(value), where)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise OptionError(f"{path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{path}: not valid TOML: {exc}") from None


def _file_layer(
    path: Path, actions: Mapping[str, argparse.Action]
) -> tuple[dict[str, Any], list[CameraTable]]:
    values: dict[str, Any] = {}
    cameras: list[CameraTable] = []
    for key, value in _read_file(path).items():
        where = f"{path}: {key}"
        if key == "cameras":
            if not isinstance(value, dict):
                raise OptionError(f"{where}: expected [cameras.NAME] tables")
            for name, table in value.items():
                cameras.append(_camera_table(path, name, table))
            continue
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise OptionError(f"{where}: unknown key (keys are the flags' names)")
        values[dest] = _convert_toml(action, value, where)
    if "source" in values and cameras:
        raise OptionError(f"{path}: source: give either source or [cameras.NAME] tables")
    return values, cameras


def _camera_table(path: Path, name: str, table: Any) -> CameraTable:
    where = f"{path}: cameras.{name}"
    if not isinstance(table, dict):
        raise OptionError(f"{where}: expected a table")
    for key, value in table.items():
        types = CAMERA_KEYS.get(key)
        if types is None:
            raise OptionError(f"{where}.{key}: unknown key (a camera has {', '.join(CAMERA_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, types):
            raise OptionError(f"{where}.{key}: {value!r} has the wrong type")
    if "source" not in table:
        raise OptionError(f"{where}: no source")
    return CameraTable(name, dict(table), where)


def _env_layer(
    environ: Mapping[str, str], actions: Mapping[str, argparse.Action]
) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for variable, text in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX):
            continue
        dest = variable[len(ENV_PREFIX) :].lower()
        action = actions.get(dest)
        if action is None or dest == "config":
            if variable not in KNOWN_OTHER_VARIABLES:
                logger.warning("ignoring %s: peercam has no such setting", variable)
            continue
        if text == "":
            continue  # set but empty: as if unset (shells and unit files do this)
        values[dest] = _convert_text(action, text, variable)
        origins[dest] = variable
    if "log_level" not in values and environ.get("PEERCAM_LOG"):  # the older name
        values["log_level"] = _convert_text(
            actions["log_level"], environ["PEERCAM_LOG"], "PEERCAM_LOG"
        )
        origins["log_level"] = "PEERCAM_LOG"
    return values, origins


def layered(
    parser: argparse.ArgumentParser,
    quiet_parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
) -> Layered:
    """Parse ``argv`` with ``parser`` and layer the variables and ``--config`` file under it.

    ``quiet_parser`` is the same parser built again; its defaults are suppressed here to learn
    which flags were given (argparse cannot tell a default from a given value).

    Raises:
        OptionError: a variable or the file has a value the flag would refuse, or the file an
            unknown key.
    """
    defaults = vars(parser.parse_args(argv))
    for action in quiet_parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(quiet_parser.parse_args(argv))
    actions = _flag_actions(parser)
    env_values, env_origins = _env_layer(environ, actions)
    config_path = given.get("config") or (
        Path(environ["PEERCAM_CONFIG"]) if environ.get("PEERCAM_CONFIG") else None
    )
    file_values: dict[str, Any] = {}
    cameras: list[CameraTable] = []
    if config_path is not None:
        file_values, cameras = _file_layer(Path(config_path), actions)
    values = dict(defaults)
    origins: dict[str, str] = {}
    for dest, value in file_values.items():
        values[dest] = value
        origins[dest] = f"{config_path}: {dest.replace('_', '-')}"
    for dest, value in env_values.items():
        values[dest] = value
        origins[dest] = env_origins[dest]
    for dest, value in given.items():
        values[dest] = value
        origins.pop(dest, None)
    sources_given = "source" in given or "source" in env_values
    if sources_given or "source" in file_values:
        cameras = []  # flags or a variable name the cameras; a top-level source, one camera
    return Layered(values, origins, cameras, sources_given)
