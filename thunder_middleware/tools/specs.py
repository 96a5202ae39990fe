"""What a program's tool environment needs (``EnvSpec``) and named presets loaded from TOML.

Specs are validated here, once, so providers never see nonsense limits: a bad spec is a 400
for the agent at declaration time, before any container, process or port exists.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thunder_middleware.tools.errors import InvalidSpec, UnknownPreset

#: path limits of Linux (PATH_MAX, NAME_MAX): a longer path could only fail at creation
MAX_PATH = 1024
MAX_NAME = 255


def check_text(value: str, what: str) -> str:
    """A string handed to the OS (argv, environment, path) cannot hold NUL: refused here, as
    a 400, instead of failing at spawn or mkdir after the environment was accepted."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    return value


def check_path(value: str, what: str) -> str:
    """An absolute path the OS can create: no NUL, no '..', within PATH_MAX/NAME_MAX."""
    check_text(value, what)
    if not value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{what} must be an absolute path without '..'")
    if len(value) > MAX_PATH or any(len(part) > MAX_NAME for part in value.split("/")):
        raise ValueError(f"{what} must be at most {MAX_PATH} characters, {MAX_NAME} per "
                         "component")
    return value


def check_command(value: list[str] | str | None, what: str) -> list[str] | str | None:
    for part in [value] if isinstance(value, str) else value or []:
        check_text(part, what)
    return value


def check_env(value: dict[str, str] | None) -> dict[str, str] | None:
    for name, text in (value or {}).items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"invalid environment variable name {name!r}")
        check_text(text, f"the value of {name}")
    return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MIN_MEMORY_BYTES = 6 * 1024**2  # below this neither runc nor a shell starts reliably


def parse_size(value: object) -> int | None:
    """``"512m"``, ``"1GiB"``, ``1048576`` -> bytes (binary units, like Docker's mem_limit)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '512m'")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(f"cannot read {value!r} as a size (use bytes or e.g. '512m', '2g')")


class ReadinessCheck(BaseModel):
    """How to tell the environment is usable: one of a command, an HTTP port or a TCP port."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(None, description="run inside; exit status 0 = ready")
    http_port: int | None = Field(None, ge=1, le=65535, description="environment port to GET")
    http_path: str = "/"
    tcp_port: int | None = Field(None, ge=1, le=65535)
    interval_s: float = Field(0.2, gt=0, le=60)
    timeout_s: float = Field(60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _exactly_one_probe(self) -> ReadinessCheck:
        probes = [p for p in (self.command, self.http_port, self.tcp_port) if p]
        if len(probes) != 1:
            raise ValueError("a readiness check needs exactly one of command, http_port, tcp_port")
        return self


class VolumeSpec(BaseModel):
    """A scratch volume owned by the environment and removed with it (never a host path)."""

    model_config = ConfigDict(extra="forbid")

    mount: str = Field(..., description="absolute path inside the environment")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

    @field_validator("mount")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return check_path(value, "mount")


class EnvSpec(BaseModel):
    """A program's tool environment. ``image`` is required by container providers only."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, min_length=1, max_length=255)
    command: list[str] | str | None = Field(
        None, description="long-running main process; none keeps the environment idle-alive"
    )
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    ports: list[int] = Field(default_factory=list, max_length=16)
    volumes: list[VolumeSpec] = Field(default_factory=list, max_length=8)
    cpus: float | None = Field(None, gt=0, le=256, description="CPU cores (may be fractional)")
    pids: int | None = Field(
        None, ge=16, le=1_000_000,
        description="most processes at once (container providers; default theirs)")
    memory: int | None = Field(None, description="bytes, or a string such as '512m'")
    readiness: ReadinessCheck | None = None
    idle_timeout_s: float | None = Field(None, gt=0, description="reclaim after this idle time")

    @field_validator("memory", mode="before")
    @classmethod
    def _parse_memory(cls, value: object) -> int | None:
        size = parse_size(value)
        if size is not None and size < MIN_MEMORY_BYTES:
            raise ValueError(f"memory must be at least {MIN_MEMORY_BYTES // 1024**2} MiB")
        return size

    @field_validator("ports")
    @classmethod
    def _valid_ports(cls, value: list[int]) -> list[int]:
        if any(not 1 <= port <= 65535 for port in value):
            raise ValueError("ports must lie in 1..65535")
        if len(set(value)) != len(value):
            raise ValueError("ports must be distinct")
        return value

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        check_env(value)
        for name in value:
            if name.startswith("THUNDER_"):
                raise ValueError("THUNDER_* variables are reserved for the environment's labels")
        return value

    @field_validator("command")
    @classmethod
    def _valid_command(cls, value: list[str] | str | None) -> list[str] | str | None:
        return check_command(value, "command")

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("workdir must be an absolute path")
        return None if value is None else check_path(value, "workdir")

    def command_argv(self) -> list[str] | None:
        """The main command as argv, or None when the spec has none."""
        return None if self.command is None else command_argv(self.command)


def command_argv(command: list[str] | str) -> list[str]:
    """A string runs through ``sh -c`` (shell syntax allowed); a list runs as given."""
    if isinstance(command, str):
        return ["sh", "-c", command]
    return list(command)


def _first_error(exc: ValidationError) -> tuple[str, str | None]:
    error = exc.errors()[0]
    param = ".".join(str(part) for part in error.get("loc", ())) or None
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


def parse_spec(data: object) -> EnvSpec:
    """Validate a spec from JSON/TOML; raises ``InvalidSpec`` (a 400) naming the bad field."""
    if isinstance(data, EnvSpec):
        return data
    if not isinstance(data, dict):
        raise InvalidSpec("the environment spec must be a JSON object")
    try:
        return EnvSpec.model_validate(data)
    except ValidationError as exc:
        message, param = _first_error(exc)
        raise InvalidSpec(f"invalid environment spec: {message}", param=param) from exc


def load_presets(path: str | Path) -> dict[str, EnvSpec]:
    """Read ``[presets.<name>]`` tables from a TOML file into validated specs."""
    with open(path, "rb") as handle:
        document = tomllib.load(handle)
    tables = document.get("presets", document)
    presets: dict[str, EnvSpec] = {}
    for name, table in tables.items():
        try:
            presets[name] = parse_spec(table)
        except InvalidSpec as exc:
            raise InvalidSpec(f"preset {name!r} in {path}: {exc.message}", param=exc.param) from exc
    return presets


def default_presets() -> dict[str, EnvSpec]:
    """The presets shipped with the package (``tools/presets.toml``)."""
    return load_presets(Path(__file__).with_name("presets.toml"))


def resolve_spec(body: Any, presets: dict[str, EnvSpec]) -> EnvSpec:
    """A request body: a full spec, or ``{"preset": name, ...fields overriding the preset}``."""
    if isinstance(body, dict) and "preset" in body:
        name = body["preset"]
        if not isinstance(name, str) or name not in presets:
            known = ", ".join(sorted(presets)) or "none configured"
            raise UnknownPreset(f"unknown environment preset {name!r} (known: {known})",
                                param="preset")
        overrides = {key: value for key, value in body.items() if key != "preset"}
        merged = presets[name].model_dump(exclude_unset=True) | overrides
        return parse_spec(merged)
    return parse_spec(body)
