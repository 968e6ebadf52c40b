"""Server settings: dataclass defaults, overridden by SDPLAY_* environment variables, then by CLI flags."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdplay.errors import InvalidRequest

if TYPE_CHECKING:
    from sdplay.loading import LoadOptions


def _home() -> Path:
    return Path(os.environ.get("SDPLAY_HOME", Path.home() / ".sdplay")).expanduser()


@dataclass(frozen=True)
class Settings:
    """Everything `sdplay serve` can be told; each field `x` is also read from SDPLAY_X."""

    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None
    api_auth: str | None = None  # "user:pass[,user2:pass2]" for the A1111 API (HTTP Basic)
    models_preload: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("auto",)  # one worker thread per device
    output_dir: Path = field(default_factory=lambda: _home() / "server" / "outputs")
    gallery_db: Path = field(default_factory=lambda: _home() / "server" / "gallery.sqlite3")
    input_dir: Path = field(default_factory=lambda: _home() / "server" / "inputs")  # uploaded images (ComfyUI API)
    default_model: str | None = None
    random_weights: bool = False
    # How models are loaded and optimised (as `sdplay generate`'s flags): passed to every engine as LoadOptions.
    no_fast: bool = False  # the compiled fast path off
    fast_options: str = ""  # fast-path options, e.g. "deepcache=3" (also $SDPLAY_FAST); turns the fast path on
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    safety_checker: bool = True
    lora_dir: Path | None = None  # None: Lora/ under sdplay's model folder
    embeddings_dir: Path | None = None  # None: embeddings/ there
    vae_dir: Path | None = None  # None: VAE/ there
    ckpt_dir: Path | None = None  # checkpoints listed beside the built-in models; None: Stable-diffusion/ there
    vae: str | None = None  # the VAE of requests that name none ("Automatic"): a path or a VAE folder name
    allow_pickle: bool = False  # pickled embeddings and VAEs (.pt, .ckpt, .bin), read with weights_only=True
    max_queue: int = 64
    max_batch: int = 4  # images per cross-request batch
    batch_window_ms: float = 50.0
    max_images: int = 8  # per request
    max_steps: int = 150
    max_side: int = 2048
    max_body_bytes: int = 16 * 2**20
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # extra Host names a keyless server answers (besides its own address)
    public_url: str | None = None  # base of absolute URLs in answers (default: the bound address)
    max_request_s: float = 0.0  # wall-clock limit of one request's work; 0 = the device's default
    max_work: int = 0  # width x height x steps x images per request; 0 = sized from the device's measured speed
    max_pixels: int = 0  # width x height per image; 0 = the device's default
    url_ttl_s: int = 3600
    url_secret: str | None = None
    preview_interval_s: float = 0.25
    job_history: int = 500

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then SDPLAY_* variables, then `overrides` whose value is not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SDPLAY_{f.name.upper()}")
            if raw is None and f.name in _ENV_ALIASES:
                raw = env.get(_ENV_ALIASES[f.name])
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, getattr(cls(), f.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    def check(self) -> Settings:
        """Refuse unsafe or impossible combinations with a message saying what to do."""
        if not is_loopback(self.host) and not self.api_key:
            raise InvalidRequest(
                f"Refusing to listen on {self.host} without an API key: anyone on the network could use it.",
                field="host",
                hint="Pass --api-key KEY (or set SDPLAY_API_KEY), or bind 127.0.0.1.",
            )
        if self.api_auth:
            parse_basic_credentials(self.api_auth)
        for name in ("max_queue", "max_batch", "max_images", "max_steps", "max_side", "max_body_bytes", "job_history"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be at least 1, got {getattr(self, name)}.", field=name)
        for name in ("max_request_s", "max_work", "max_pixels"):
            if getattr(self, name) < 0:
                raise InvalidRequest(f"{name} must be 0 (the device's default) or more.", field=name)
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise InvalidRequest(
                f"public_url must start with http:// or https://, got {self.public_url!r}.",
                field="public_url",
                hint="For example --public-url https://images.example.org",
            )
        if self.batch_window_ms < 0:
            raise InvalidRequest("batch_window_ms must be 0 (off) or more.", field="batch_window_ms")
        if not self.devices:
            raise InvalidRequest("At least one device is needed.", field="devices", hint="Use --device auto.")
        return self

    def load_options(self) -> LoadOptions:
        """The load options every engine of this server gets."""
        from sdplay.loading import LoadOptions

        return LoadOptions(
            random_weights=self.random_weights,
            safety_checker=self.safety_checker,
            attention_slicing=self.attention_slicing,
            vae_slicing=self.vae_slicing,
            vae_tiling=self.vae_tiling,
            cpu_offload=self.cpu_offload,
            fast=False if self.no_fast else (True if self.fast_options else None),
            fast_options=self.fast_options,
            lora_dir=str(self.lora_dir) if self.lora_dir else None,
            embeddings_dir=str(self.embeddings_dir) if self.embeddings_dir else None,
            vae_dir=str(self.vae_dir) if self.vae_dir else None,
            ckpt_dir=str(self.ckpt_dir) if self.ckpt_dir else None,
            vae=self.vae or None,
            allow_pickle=self.allow_pickle,
        )


_ENV_ALIASES = {
    "devices": "SDPLAY_DEVICE",
    "cors_origins": "SDPLAY_CORS_ORIGIN",
    "allowed_hosts": "SDPLAY_ALLOWED_HOST",
    "fast_options": "SDPLAY_FAST",
}


def _parse(name: str, raw: str, default: Any) -> Any:
    """Convert an environment string to the type of the field's default."""
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw).expanduser()
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise InvalidRequest(f"SDPLAY_{name.upper()}={raw!r} is not valid: {exc}.", field=name) from exc
    return raw


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_basic_credentials(spec: str) -> dict[str, str]:
    """'user:pass,user2:pass2' -> {user: pass}."""
    creds = {}
    for part in spec.split(","):
        user, sep, password = part.strip().partition(":")
        if not sep or not user or not password:
            raise InvalidRequest(
                f"--api-auth expects user:password pairs separated by commas, got {part.strip()!r}.",
                field="api_auth",
                hint="Example: --api-auth alice:secret",
            )
        creds[user] = password
    return creds
