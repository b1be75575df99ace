"""The browser side of pushcli: a service worker and a subscribe page, ready to serve.

``init_site`` copies three templates shipped with the package (``sw.js``,
``subscribe.js``, ``index.html``) into a directory, filling in the VAPID public
key (applicationServerKey) and, optionally, the URL that receives new
subscriptions. Placeholders are whole JavaScript string literals such as
``"__PUSHCLI_APPLICATION_SERVER_KEY__"`` and are replaced by ``json.dumps`` of
the value, so any value becomes a valid, correctly escaped JS literal.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from pushcli.encoding import b64_decode, b64url_encode
from pushcli.errors import InputError

__all__ = ["SITE_FILES", "init_site", "render_template"]

#: Files written by :func:`init_site`, in the order they are written.
SITE_FILES: tuple[str, ...] = ("sw.js", "subscribe.js", "index.html")

_KEY_PLACEHOLDER = '"__PUSHCLI_APPLICATION_SERVER_KEY__"'
_URL_PLACEHOLDER = '"__PUSHCLI_SUBSCRIBE_URL__"'


def _check_key(application_server_key: str) -> str:
    """Return the key as unpadded base64url; it must be an uncompressed P-256 point."""
    try:
        raw = b64_decode(application_server_key)
    except ValueError as exc:
        raise InputError(f"applicationServerKey {exc}") from None
    if len(raw) != 65 or raw[0] != 0x04:
        raise InputError(
            "applicationServerKey must be the base64url of a 65-byte uncompressed P-256 "
            f"public key (got {len(raw)} bytes); use the VAPID public key"
        )
    return b64url_encode(raw)


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_subscribe_url(subscribe_url: str | None) -> str | None:
    """The URL the page POSTs subscriptions (with their auth secrets) to.

    Checked as a browser's URL parser reads it, not as ``urlsplit`` does:
    browsers drop tabs and newlines anywhere and read ``\\`` as ``/`` before
    the query, so ``/\\evil.example/x`` or ``/<TAB>/evil.example`` would send
    every subscriber's secret to another host. Accepted: a same-origin path or
    an ``https://`` URL (``http://`` only to this machine, for development).
    """
    if subscribe_url is None:
        return None
    if not isinstance(subscribe_url, str) or not subscribe_url.strip():
        raise InputError("subscribe URL must be an https URL or a path starting with '/'")
    url = subscribe_url.strip()
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise InputError(
            f"subscribe URL {url!r} contains a tab, newline or control character; browsers "
            "drop them, so it would not go where it looks like it goes"
        )
    before_query = url.split("?", 1)[0].split("#", 1)[0]
    if url.startswith("/"):
        if before_query.replace("\\", "/").startswith("//"):
            raise InputError(
                f"subscribe URL {url!r}: a browser reads this as another host "
                "(protocol-relative); use https://host/path or /path"
            )
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc or not parts.hostname:
        raise InputError(
            f"subscribe URL {url!r} must be an https URL or a path starting with '/'"
        )
    if "\\" in before_query or "@" in parts.netloc:
        raise InputError(
            f"subscribe URL {url!r}: a backslash or user@ in the address makes browsers "
            "read another host or refuse the request; use https://host/path"
        )
    if scheme == "http" and parts.hostname.lower() not in _LOOPBACK_HOSTS:
        raise InputError(
            f"subscribe URL {url!r}: plain http would send subscribers' secrets unencrypted; "
            "use https (http is accepted only for localhost)"
        )
    return url


def render_template(name: str, application_server_key: str, subscribe_url: str | None) -> str:
    """Return template *name* with the placeholders filled in (values already checked)."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    text = text.replace(_KEY_PLACEHOLDER, json.dumps(application_server_key))
    return text.replace(_URL_PLACEHOLDER, json.dumps(subscribe_url))


def init_site(
    directory: str | os.PathLike[str],
    application_server_key: str,
    *,
    subscribe_url: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write ``sw.js``, ``subscribe.js`` and ``index.html`` into *directory*.

    *application_server_key* is the VAPID public key as base64url (padding and
    the standard alphabet are accepted and normalised). *subscribe_url* is where
    the page and the service worker POST subscriptions as JSON: an ``http(s)://``
    URL or a path starting with ``/``; without it the page shows the JSON to copy.

    Nothing is written if any target exists and *force* is false. Returns the
    paths written. Raises :class:`pushcli.errors.InputError`.
    """
    key = _check_key(application_server_key)
    url = _check_subscribe_url(subscribe_url)
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: not a directory")
    paths = [target / name for name in SITE_FILES]
    if not force:
        for path in paths:
            if path.exists() or path.is_symlink():
                raise InputError(f"{path}: already exists (use --force to overwrite)")
    rendered = [render_template(name, key, url) for name in SITE_FILES]
    try:
        target.mkdir(parents=True, exist_ok=True)
        for path, text in zip(paths, rendered, strict=True):
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{exc.filename or target}: {exc.strerror or exc}") from None
    return paths
