"""The archive client an ``archives.<name>`` entry of ``data_download.yaml`` asks for."""

import os
import urllib.parse
import urllib.request

from ..errors import ConfigError
from .lco_archive import LCOArchive
from .local import LocalArchive

__all__ = ["archive_from_config"]


def _cfg(cfg, key, default=None):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def archive_from_config(cfg, **kwargs):
    """The archive client an ``archives.<name>`` entry of ``data_download.yaml`` asks for.

    Parameters
    ----------
    cfg : ArchiveConfig or dict
        Needs ``url``; ``token_envvar``, ``name``, ``max_seconds``, ``timeout`` (read timeout,
        seconds) and ``retries`` are used when present.
        An ``http(s)://`` URL gives an :class:`LCOArchive`; a ``file://`` URL
        or a plain folder path gives a :class:`LocalArchive`.
    **kwargs
        Passed to the client (``timeout``, ``retries`` ...).

    Returns
    -------
    LCOArchive or LocalArchive

    Raises
    ------
    ConfigError
        The URL is empty or of an unknown scheme.

    Examples
    --------
    >>> archive_from_config({"name": "lco", "url": "https://archive-api.lco.global",
    ...                      "token_envvar": "LCO_ARCHIVE_TOKEN"})
    LCOArchive(url='https://archive-api.lco.global/', token_envvar='LCO_ARCHIVE_TOKEN', \
timeout=(5, 60), retries=5)
    """
    name = _cfg(cfg, "name")
    url = str(_cfg(cfg, "url") or "").strip()
    if not url:
        raise ConfigError(f"archive {name!r}: 'url' is empty; expected an http(s):// archive "
                          "API root, a file:// URL or a folder path")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        timeout, retries = _cfg(cfg, "timeout"), _cfg(cfg, "retries")
        if timeout is not None:  # the config's read timeout; connecting never waits longer
            kwargs.setdefault("timeout", (min(5.0, float(timeout)), float(timeout)))
        if retries is not None:
            kwargs.setdefault("retries", int(retries))
        if _cfg(cfg, "max_seconds") is not None:
            kwargs.setdefault("max_seconds", float(_cfg(cfg, "max_seconds")))
        return LCOArchive(url, token_envvar=_cfg(cfg, "token_envvar"), name=name, **kwargs)
    if parts.scheme == "file":
        folder = urllib.request.url2pathname(parts.path)
        return LocalArchive(folder, name=name, **kwargs)
    if not parts.scheme or (len(parts.scheme) == 1 and os.name == "nt"):
        return LocalArchive(url, name=name, **kwargs)
    raise ConfigError(f"archive {name!r}: url {url!r} has an unknown scheme {parts.scheme!r}; "
                      "expected http(s)://, file:// or a folder path")
