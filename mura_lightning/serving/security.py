"""API keys: read from a file, compared in constant time."""

from __future__ import annotations

import hmac
from pathlib import Path

from mura_lightning.errors import MuraError

KEY_HEADER = "X-API-Key"


class ApiKeys:
    """The keys of `serve.api_keys_file` (one a line; blank lines and `#` comments ignored); with no file, every
    request is accepted (the service then binds to the loopback address only, see ServeSettings.check)."""

    def __init__(self, path: str | Path | None) -> None:
        self.keys: list[bytes] = []
        if path is not None:
            lines = Path(path).expanduser().read_text().splitlines()
            self.keys = [line.strip().encode() for line in lines if line.strip() and not line.startswith("#")]
            if not self.keys:
                raise MuraError(f"serve.api_keys_file={path} holds no key: write one key a line")

    @property
    def required(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self.keys)

    def accepts(self, given: str | None) -> bool:
        """Whether `given` (the X-API-Key header, or None) is one of the keys, compared with every key in constant
        time (hmac.compare_digest), so neither a key's content nor its position leaks through timing."""
        if not self.required:
            return True
        candidate = (given or "").encode()
        matches = [hmac.compare_digest(candidate, key) for key in self.keys]
        return given is not None and any(matches)
