"""haasd: the token daemon for the HaaS (Humans as a Service) API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("haasd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
