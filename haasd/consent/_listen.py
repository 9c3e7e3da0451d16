"""Where :mod:`haasd.client._loopback` (the loopback redirect listener of ``haasd consent
listen``) used to live; its names, for code that imports them from here."""

from haasd.client._loopback import WAITING, Granted, Page, RedirectListener, listen_on_loopback

__all__ = ["WAITING", "Granted", "Page", "RedirectListener", "listen_on_loopback"]
