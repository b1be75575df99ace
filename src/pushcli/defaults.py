"""The names an operator types: environment variables and default file names.

Their one home. Plain strings, and how to read the store setting, loading nothing
of pushcli's: ``cli.py`` declares its options (``--db``/``PUSHCLI_DB``,
``--key``/``PUSHCLI_VAPID_PRIVATE_KEY``, ...) and ``spawn`` sizes the store
without loading the store, the crypto or the endpoint tables at start-up;
``keys``, ``pushservices`` and ``store`` use the same constants.
"""

from __future__ import annotations

import os

#: The store when neither ``--db`` nor ``PUSHCLI_DB`` names one (in the working directory).
DEFAULT_DB = "pushcli.db"
DB_ENV = "PUSHCLI_DB"
PRIVATE_KEY_NAME = "vapid_private.pem"
PUBLIC_KEY_NAME = "vapid_public.pem"
PRIVATE_KEY_ENV = "PUSHCLI_VAPID_PRIVATE_KEY"
SUBJECT_ENV = "PUSHCLI_VAPID_SUBJECT"
#: Extra endpoint hosts to accept, comma-separated (as ``--allow-host``).
ALLOW_HOSTS_ENV = "PUSHCLI_ALLOW_HOSTS"
#: ``uvloop`` runs sends on uvloop where installed; anything else, asyncio's loop (``eventloop``).
EVENT_LOOP_ENV = "PUSHCLI_EVENT_LOOP"


def db_setting(value: str | os.PathLike[str] | None = None) -> str:
    """What names the store, unparsed: ``--db``, else ``PUSHCLI_DB``, else ``pushcli.db``."""
    return os.fspath(value) if value is not None else os.environ.get(DB_ENV) or DEFAULT_DB


__all__ = ["ALLOW_HOSTS_ENV", "DB_ENV", "DEFAULT_DB", "EVENT_LOOP_ENV", "PRIVATE_KEY_ENV",
           "PRIVATE_KEY_NAME", "PUBLIC_KEY_NAME", "SUBJECT_ENV", "db_setting"]
