"""Sidecar settings: command-line flags > THUNDER_* environment variables > TOML file > defaults.

One pydantic-settings model holds every knob so that the CLI, the environment and a config
file cannot drift apart; the policy knobs are mapped onto the policy's own ``PolicyConfig`` in
:mod:`thunder_middleware.sidecar.runtime` and nowhere else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from thunder_middleware.security.config import TenantConfig

EnvProvider = Literal["local", "docker", "kubernetes", "none"]
BackendKind = Literal["auto", "vllm", "sglang", "openai"]
# a Kubernetes namespace is a DNS-1123 label
K8S_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class SidecarSettings(BaseSettings):
    """Everything ``thunder-middleware serve`` can be told."""

    model_config = SettingsConfigDict(env_prefix="THUNDER_", extra="ignore")

    # Where the sidecar listens and what it fronts.
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=1, le=65535)
    backends: Annotated[list[str], NoDecode] = Field(default_factory=list)
    backend_kind: BackendKind = "auto"
    backend_capacity: int | None = Field(None, gt=0, description="KV tokens of generic backends")
    backend_api_key: str | None = None

    # Policy knobs (DESIGN.md section 3); seconds are policy seconds, see time_scale.
    check_interval: float = Field(5.0, gt=0)
    decay_base: float = Field(2.0, ge=1.0, description="1.0 disables the decay")
    tool_halflives: float = Field(
        1.5, gt=0, description="cost-aware: decay half-life in mean tool times")
    lambda_max: float = Field(1.0, gt=0)
    lambda_min: float = Field(1.0, gt=0)
    idle_timeout: float = Field(600.0, gt=0)
    starvation_bound: float = Field(300.0, gt=0)
    time_scale: float = Field(1.0, gt=0, description="policy clock runs this much faster")

    # Runtime and proxy.
    metrics_interval: float = Field(1.0, gt=0, description="real seconds between scrapes")
    request_timeout: float = Field(600.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    max_connections: int = Field(2048, ge=16)
    # Longer than any client's idle expiry (httpx 5 s, aiohttp 15 s), so the client always
    # closes an idle connection first: a server closing it just as a loaded client reuses it
    # is what turns into a client-side ReadError with no request ever seen.
    keep_alive_timeout: float = Field(75.0, gt=0, description="s an idle connection stays open")
    strip_program_id: bool = False
    prep_ahead: int = Field(4, ge=0, description="paused programs whose environment is readied")
    max_program_id_length: int = Field(256, ge=8)
    max_tool_names: int = Field(
        64, ge=1, description="tool names with their own tool-time estimate and metric label")
    cost_aware: bool = True
    self_check: bool = Field(
        True, description="measure gating against pass-through, keep whichever is faster")
    env_provider: EnvProvider = "local"
    env_presets: Path | None = Field(
        None, description="TOML file of named EnvSpec presets, merged over the bundled ones")
    release_timeout: float = Field(
        10.0, gt=0, description="s a release waits for its environment reclaim")
    # The environment manager (thunder_middleware.tools.ManagerConfig) and its provider;
    # these seconds are wall-clock seconds (environments do not run on the policy clock).
    max_environments: int = Field(64, ge=1, description="live environments; more queue")
    env_create_concurrency: int = Field(8, ge=1, description="creations in flight at once")
    env_create_attempts: int = Field(3, ge=1, description="tries per creation (engine errors)")
    env_port_range: Annotated[tuple[int, int], NoDecode] = Field(
        (20000, 29999), description="host ports lent to environments, LOW-HIGH")
    env_idle_timeout: float = Field(
        900.0, ge=0, description="s before an unused environment is reclaimed; 0 = never")
    env_ready_timeout: float = Field(
        600.0, gt=0, description="longest an exec waits for its environment to be ready, s")
    env_exec_timeout: float = Field(60.0, gt=0, description="an exec's timeout when none given")
    env_max_exec_timeout: float = Field(3600.0, gt=0, description="largest exec timeout, s")
    env_output_limit: int = Field(
        64 * 1024, ge=1024, description="bytes of stdout and of stderr kept per exec")
    k8s_namespace: str = Field("default", description="namespace of the kubernetes provider")
    log_level: str = "info"

    # Security and persistence (issue 7: thunder_middleware.security, thunder_middleware.store).
    state_dir: Path | None = Field(None, description="SQLite program store; none = in memory")
    api_keys: str | None = Field(None, description="tenant:hash,... (THUNDER_API_KEYS)")
    tenants: list[TenantConfig] = Field(default_factory=list, description="[[tenants]] tables")
    max_programs_per_tenant: int | None = Field(None, ge=1)
    # with several tenants: each holds at most its weighted share of the backends' KV in
    # calls in flight (weights per [[tenants]] table, equal by default), and at most this
    # many calls in flight
    tenant_fair_share: bool = True
    tenant_max_inflight: int | None = Field(None, ge=1)
    max_environments_per_tenant: int | None = Field(None, ge=0)
    allow_unauthenticated_remote: bool = False
    # several tenants on the local environment provider (no isolation) only when set
    trust_local_tenants: bool = False
    # with keys on, /docs, /redoc and /openapi.json need a key too, unless this is set
    public_docs: bool = False
    failed_key_burst: int = Field(
        10, ge=1, description="unknown-key checks (one scrypt each) per client address...")
    failed_key_rate: float = Field(
        1.0, gt=0, description="...refilled at this many a second; then 429")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    body_timeout: float = Field(30.0, gt=0, description="s between body chunks before a 408")
    body_deadline: float = Field(
        300.0, gt=0, description="s for a whole request body, however it trickles, before a 408")
    header_timeout: float = Field(
        10.0, gt=0, description="s from a connection (or a request's first byte) to the end "
        "of its headers before a 408 and close")

    _toml_path: ClassVar[Path | None] = None

    @field_validator("backends", mode="before")
    @classmethod
    def _split_backends(cls, value: Any) -> Any:
        """THUNDER_BACKENDS may be a comma-separated list, the friendliest form in a shell."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("backends")
    @classmethod
    def _normalise_backends(cls, value: list[str]) -> list[str]:
        # a backend is the engine's root (it serves /metrics and /health there); the OpenAI
        # base URL (".../v1") that users copy from client code is taken to mean the same
        urls = [url.rstrip("/") for url in value]
        urls = [url[: -len("/v1")] if url.endswith("/v1") else url for url in urls]
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend {url!r} is not an http(s) URL (e.g. "
                                 "http://vllm-0:8000)")
        return urls

    @field_validator("k8s_namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not K8S_NAMESPACE.fullmatch(value):
            raise ValueError(f"k8s_namespace {value!r} is not a Kubernetes namespace name "
                             "(lowercase letters, digits and '-', at most 63 characters)")
        return value

    @field_validator("env_port_range", mode="before")
    @classmethod
    def _parse_port_range(cls, value: Any) -> Any:
        """``20000-29999`` (flag, THUNDER_ENV_PORT_RANGE) or ``[20000, 29999]`` (TOML)."""
        if isinstance(value, str):
            low, dash, high = value.strip().partition("-")
            if not (dash and low.strip().isdigit() and high.strip().isdigit()):
                raise ValueError(f"env_port_range must look like 20000-29999, not {value!r}")
            return int(low), int(high)
        return value

    @field_validator("env_port_range")
    @classmethod
    def _check_port_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1024 <= low <= high <= 65535:
            raise ValueError("env_port_range must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535")
        return value

    @model_validator(mode="after")
    def _check_watermarks(self) -> SidecarSettings:
        if self.lambda_min > self.lambda_max:
            raise ValueError("lambda_min must not exceed lambda_max (hysteresis window)")
        if self.env_exec_timeout > self.env_max_exec_timeout:
            raise ValueError("env_exec_timeout must not exceed env_max_exec_timeout")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)


def load_settings(config: Path | None = None, **overrides: Any) -> SidecarSettings:
    """Build settings; ``overrides`` (the flags actually given) win over everything else."""
    given = {key: value for key, value in overrides.items() if value is not None}

    class _WithFile(SidecarSettings):
        _toml_path = config

    loaded = _WithFile(**given)
    return SidecarSettings.model_validate(loaded.model_dump())
