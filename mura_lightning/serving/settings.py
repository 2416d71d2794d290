"""The service's settings (conf/serve.yaml's `serve` node) as typed values, and the rule that keeps it private by
default: any address but the loopback one needs API keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mura_lightning.errors import MuraError

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Limits:
    """What one request may hold and how long it may take (see conf/serve.yaml)."""

    max_body_bytes: int
    max_header_bytes: int
    max_images: int
    max_pixels: int
    body_timeout_s: float
    keep_alive_s: int
    max_queued_studies: int


@dataclass(frozen=True)
class Batching:
    """How studies of concurrent requests share the model's batches."""

    max_batch_images: int
    max_wait_ms: float


@dataclass(frozen=True)
class ServeSettings:
    """conf/serve.yaml's `serve` node."""

    host: str
    port: int
    api_keys_file: str | None
    limits: Limits
    batching: Batching
    graceful_shutdown_s: int

    @classmethod
    def from_config(cls, serve: DictConfig | dict[str, Any]) -> ServeSettings:
        """The settings of a composed `serve` node, checked (`check`)."""
        values = OmegaConf.to_container(serve, resolve=True) if isinstance(serve, DictConfig) else dict(serve)
        settings = cls(
            host=str(values["host"]),
            port=int(values["port"]),
            api_keys_file=values.get("api_keys_file"),
            limits=Limits(**values["limits"]),
            batching=Batching(**values["batching"]),
            graceful_shutdown_s=int(values["graceful_shutdown_s"]),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that would expose the model without keys, or that cannot work."""
        if not is_loopback(self.host) and not self.api_keys_file:
            raise MuraError(
                f"serve.host={self.host} would accept requests from other machines without API keys: set "
                "serve.api_keys_file=FILE (one key a line; clients send one in the X-API-Key header), or keep the "
                "default serve.host=127.0.0.1"
            )
        if self.api_keys_file and not Path(self.api_keys_file).expanduser().is_file():
            raise MuraError(f"serve.api_keys_file={self.api_keys_file} does not exist: give a file of keys, one a line")
        for name in ("max_body_bytes", "max_header_bytes", "max_images", "max_pixels", "max_queued_studies"):
            if getattr(self.limits, name) < 1:
                raise MuraError(f"serve.limits.{name}={getattr(self.limits, name)} must be at least 1")
        if self.batching.max_batch_images < 1 or self.batching.max_wait_ms < 0:
            raise MuraError(
                f"serve.batching.max_batch_images={self.batching.max_batch_images} must be at least 1 and "
                f"serve.batching.max_wait_ms={self.batching.max_wait_ms} at least 0"
            )


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
