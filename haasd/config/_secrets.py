"""Where a secret comes from (:class:`SecretSource`) and reading a secret file."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from haasd.errors import ConfigError
from haasd.secret import Secret


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a secret comes from; :meth:`load` reads it.

    Order: ``$CREDENTIALS_DIRECTORY/<credential>`` (systemd ``LoadCredential=``), then the
    environment variable, then ``file`` from the configuration, then ``inline`` (only ever
    set in test mode: a client secret, or a password inline in ``store.url``).
    """

    key: str  # the config key, for error messages, e.g. "haas.client_secret"
    credential: str
    env_var: str
    file: Path | None = None
    inline: Secret | None = field(default=None, repr=False)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> str:
        """Which source :meth:`load` will use, without reading it."""
        creds = self.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / self.credential).exists():
            return f"systemd credential {self.credential!r}"
        if self.environ.get(self.env_var):
            return f"environment variable {self.env_var}"
        if self.file is not None:
            return f"file {self.file}"
        if self.inline is not None:
            return "inline in the config file"
        return "nowhere"

    def load_optional(self) -> Secret | None:
        """:meth:`load`, or None when the secret is given nowhere (for a secret that may
        be absent, such as a database password where the server needs none)."""
        if self.describe() == "nowhere":
            return None
        return self.load()

    def load(self) -> Secret:
        creds = self.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            path = Path(creds) / self.credential
            if path.exists():
                # systemd makes credential files private to the service; no mode check
                return Secret(_read_secret(path, self.key, check_mode=False))
        value = self.environ.get(self.env_var)
        if value:
            return Secret(value.strip())
        if self.file is not None:
            return Secret(_read_secret(self.file, self.key, check_mode=True))
        if self.inline is not None:
            return self.inline
        raise ConfigError(
            "configuration",
            self.key,
            f"no secret given: set {self.env_var}, pass the systemd credential "
            f"{self.credential!r}, or name a file in the config",
        )


def _read_secret(path: Path, key: str, *, check_mode: bool) -> str:
    """The stripped text of ``path``; with ``check_mode``, only if no group or other may
    read it. The mode is checked on the file opened, not on the path beforehand: a file
    swapped in between cannot slip past the check."""
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if check_mode and mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    str(path),
                    key,
                    f"secret file is readable by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}",
                )
            text = f.read().decode("utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(path), key, f"cannot read secret file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), key, "secret file is not UTF-8 text") from exc
    if not text:
        raise ConfigError(str(path), key, "secret file is empty")
    return text
