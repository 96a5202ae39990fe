"""``thunder-middleware serve``: the sidecar in front of vLLM-compatible backends.

Every flag defaults to None so that only flags actually given override THUNDER_* variables
and the TOML file (see :mod:`thunder_middleware.sidecar.settings`).
"""

from __future__ import annotations

import inspect
import logging
import math
import socket
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperCommand

from thunder_middleware.sidecar.settings import EnvProvider, SidecarSettings, load_settings


class PlainHelpCommand(TyperCommand):
    """``--help`` as plain text wrapped to the terminal: rich's option table cuts long
    option names (``--env-create-concu…``) at 80 columns, click's layout never does."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.rich_markup_mode = None
        super().format_help(ctx, formatter)


def bind_port(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (backend probes, orphan
    reaping), so a port in use is reported at once. Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(
    backend: list[str] = typer.Option(
        None, "--backend",
        help="Engine URL, e.g. http://vllm-0:8000 (a trailing /v1 is dropped); repeat for more."),
    host: str = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to listen on (default 9000)."),
    config: Path = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="TOML file with settings (same names as the flags).",
    ),
    check_interval: float = typer.Option(None, help="Policy check period, seconds (default 5)."),
    decay_base: float = typer.Option(None, help="x of the acting decay f(t)=x^-t (default 2)."),
    tool_halflives: float = typer.Option(
        None, help="Cost-aware decay half-life in mean tool times (default 1.5; 8 with "
        "--lambda-min 0.8 keeps caches longer: see benchmarks/README.md)."),
    lambda_max: float = typer.Option(
        None, help="High watermark, fraction of capacity (default 1.0)."
    ),
    lambda_min: float = typer.Option(
        None, help="Low watermark, fraction of capacity (default 1.0)."
    ),
    idle_timeout: float = typer.Option(
        None, help="Expire programs idle this long, s (default 600)."
    ),
    starvation_bound: float = typer.Option(
        None, help="Restore after waiting this long (default 300)."
    ),
    time_scale: float = typer.Option(
        None, help="Divide all policy time constants by this (default 1)."
    ),
    backend_capacity: int = typer.Option(None, help="KV tokens of generic OpenAI backends."),
    backend_kind: str = typer.Option(None, help="auto | vllm | sglang | openai (default auto)."),
    env_provider: str = typer.Option(
        None, help="local | docker | kubernetes | none (default local)."
    ),
    env_presets: Path = typer.Option(
        None, "--env-presets", dir_okay=False,
        help="TOML file of [presets.<name>] environment specs, merged over the bundled ones."),
    release_timeout: float = typer.Option(
        None, help="Seconds a release waits for its environment reclaim (default 10)."),
    prep_ahead: int = typer.Option(
        None, help="Paused programs, next in restore order, whose environment is readied "
        "ahead (default 4; 0 = none)."),
    max_environments: int = typer.Option(
        None, help="Live tool environments at once; more wait in a queue (default 64)."),
    env_create_concurrency: int = typer.Option(
        None, help="Environment creations in flight towards the engine (default 8)."),
    env_create_attempts: int = typer.Option(
        None, help="Tries per environment creation on engine errors (default 3)."),
    env_port_range: str = typer.Option(
        None, help="Host ports lent to environments, LOW-HIGH (default 20000-29999)."),
    env_idle_timeout: float = typer.Option(
        None, help="Reclaim an environment unused this long, s; 0 = never (default 900)."),
    env_ready_timeout: float = typer.Option(
        None, help="Longest an exec waits for its environment to be ready, s (default 600)."),
    env_exec_timeout: float = typer.Option(
        None, help="Timeout of an exec that names none, s (default 60)."),
    env_max_exec_timeout: float = typer.Option(
        None, help="Largest exec timeout a caller may ask for, s (default 3600)."),
    env_output_limit: int = typer.Option(
        None, help="Bytes of stdout and of stderr kept per exec (default 65536)."),
    k8s_namespace: str = typer.Option(
        None, help="Namespace of the kubernetes environment provider (default 'default')."),
    metrics_interval: float = typer.Option(None, help="Backend scrape period, s (default 1)."),
    request_timeout: float = typer.Option(
        None, help="Longest silence of a backend within a call, s; a call without progress "
        "for this long (plus the connect timeout) is ended by the watchdog (default 600)."),
    cost_aware: bool = typer.Option(
        None, "--cost-aware/--no-cost-aware", help="Pause only when it pays off (default on)."
    ),
    self_check: bool = typer.Option(
        None, "--self-check/--no-self-check",
        help="Measure gating against pass-through and keep the faster (default on)."),
    strip_program_id: bool = typer.Option(
        None,
        "--strip-program-id/--keep-program-id",
        help="Remove program_id before forwarding (default keep).",
    ),
    log_level: str = typer.Option(None, help="uvicorn / sidecar log level (default info)."),
    state_dir: Path = typer.Option(
        None, help="Keep programs in SQLite here so a restart finds them (default: memory)."),
    allow_unauthenticated_remote: bool = typer.Option(
        None, "--allow-unauthenticated-remote",
        help="Allow a non-loopback --host without API keys (trusted networks only)."),
    trust_local_tenants: bool = typer.Option(
        None, "--trust-local-tenants",
        help="Allow several tenants on the local environment provider, which does not "
        "isolate them from each other (see docs/SECURITY.md)."),
    public_docs: bool = typer.Option(
        None, "--public-docs", help="Serve /docs and /openapi.json without a key."),
    max_body_bytes: int = typer.Option(None, help="Largest request body (default 16 MiB)."),
    max_header_bytes: int = typer.Option(None, help="Largest header block (default 32 KiB)."),
    body_timeout: float = typer.Option(None, help="Seconds between body chunks (default 30)."),
    body_deadline: float = typer.Option(
        None, help="Seconds for a whole request body, however it trickles (default 300)."),
    header_timeout: float = typer.Option(
        None, help="Seconds for a request's headers to arrive (default 10)."),
    max_programs_per_tenant: int = typer.Option(None, help="Live programs per tenant."),
) -> None:
    """Run the program-aware sidecar."""
    import uvicorn

    from thunder_middleware.sidecar.app import create_app

    provider: EnvProvider | None = env_provider  # type: ignore[assignment]
    try:
        settings = load_settings(
            config,
            backends=backend or None,
            host=host,
            port=port,
            check_interval=check_interval,
            decay_base=decay_base,
            tool_halflives=tool_halflives,
            lambda_max=lambda_max,
            lambda_min=lambda_min,
            idle_timeout=idle_timeout,
            starvation_bound=starvation_bound,
            time_scale=time_scale,
            backend_capacity=backend_capacity,
            backend_kind=backend_kind,
            env_provider=provider,
            env_presets=env_presets,
            release_timeout=release_timeout,
            prep_ahead=prep_ahead,
            max_environments=max_environments,
            env_create_concurrency=env_create_concurrency,
            env_create_attempts=env_create_attempts,
            env_port_range=env_port_range,
            env_idle_timeout=env_idle_timeout,
            env_ready_timeout=env_ready_timeout,
            env_exec_timeout=env_exec_timeout,
            env_max_exec_timeout=env_max_exec_timeout,
            env_output_limit=env_output_limit,
            k8s_namespace=k8s_namespace,
            metrics_interval=metrics_interval,
            request_timeout=request_timeout,
            cost_aware=cost_aware,
            self_check=self_check,
            strip_program_id=strip_program_id,
            log_level=log_level,
            state_dir=state_dir,
            allow_unauthenticated_remote=allow_unauthenticated_remote,
            trust_local_tenants=trust_local_tenants,
            public_docs=public_docs,
            max_body_bytes=max_body_bytes,
            max_header_bytes=max_header_bytes,
            body_timeout=body_timeout,
            body_deadline=body_deadline,
            header_timeout=header_timeout,
            max_programs_per_tenant=max_programs_per_tenant,
        )
    except ValidationError as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    if not settings.backends:
        typer.echo("at least one --backend URL is required (or THUNDER_BACKENDS)", err=True)
        raise typer.Exit(2)
    from thunder_middleware.sidecar.environments import PresetFileError, load_env_presets

    try:
        load_env_presets(settings.env_presets)
    except PresetFileError as exc:
        typer.echo(f"invalid --env-presets: {exc}", err=True)
        raise typer.Exit(2) from exc
    from thunder_middleware.security import UnsafeBindError, check_bind
    from thunder_middleware.security.isolation import UnsafeIsolationError, check_isolation
    from thunder_middleware.sidecar.app import security_config

    security = security_config(settings)
    try:
        check_bind(settings.host, auth_enabled=security.auth_enabled,
                   allow_unauthenticated_remote=settings.allow_unauthenticated_remote)
        check_isolation(tenants=sum(1 for tenant in security.tenants if tenant.keys),
                        provider=settings.env_provider,
                        tenants_trusted=settings.trust_local_tenants)
    except (UnsafeBindError, UnsafeIsolationError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    try:
        listening = bind_port(settings.host, settings.port)
    except OSError as exc:
        typer.echo(f"cannot listen on {settings.host}:{settings.port}: "
                   f"{exc.strerror or exc} (is another sidecar running there? choose "
                   "another --port)", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("httpx", "httpcore"):  # a line per backend scrape is noise at INFO
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger(__name__).info(
        "sidecar listening on http://%s:%d (OpenAI base http://%s:%d/v1), backends: %s",
        settings.host, settings.port, settings.host, settings.port, ", ".join(settings.backends))
    from thunder_middleware.sidecar.environments import ProviderUnavailable
    from thunder_middleware.store import StoreError

    try:
        app = create_app(settings)
    except (StoreError, ProviderUnavailable) as exc:  # a newer --state-dir, no engine
        listening.close()
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    from thunder_middleware.sidecar.deadlines import header_deadline_protocol

    server = uvicorn.Server(uvicorn.Config(
        app,
        http=header_deadline_protocol(settings.header_timeout),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=math.ceil(settings.keep_alive_timeout),
        backlog=4096,
    ))
    server.run(sockets=[listening])


#: flags whose setting (and THUNDER_* variable) has another name
_SETTING_OF_FLAG = {"backend": "backends"}


def _name_environment_variables(command: Any) -> None:
    """Append each option's THUNDER_* variable to its help (the settings read the same
    variables, so the help cannot name one the sidecar ignores)."""
    for name, parameter in inspect.signature(command).parameters.items():
        setting = _SETTING_OF_FLAG.get(name, name)
        if setting not in SidecarSettings.model_fields:
            continue  # --config: a file, not a setting
        info = parameter.default
        info.help = f"{info.help} [env: THUNDER_{setting.upper()}]"


_name_environment_variables(serve)
