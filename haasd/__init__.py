"""haasd: the token daemon for the HaaS (Humans as a Service) API."""

#: the one place the version is written (pyproject.toml reads it from here): no
#: importlib.metadata lookup at every start
__version__ = "0.1.0"

__all__ = ["__version__"]
