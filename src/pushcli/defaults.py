"""The names an operator types: environment variables and default file names.

Their one home. Plain strings with no imports, so ``cli.py`` can declare its
options (``--db``/``PUSHCLI_DB``, ``--key``/``PUSHCLI_VAPID_PRIVATE_KEY``, ...)
without loading the store, the crypto or the endpoint tables at start-up;
``keys``, ``pushservices`` and ``store`` use the same constants.
"""

from __future__ import annotations

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

__all__ = ["ALLOW_HOSTS_ENV", "DB_ENV", "DEFAULT_DB", "EVENT_LOOP_ENV", "PRIVATE_KEY_ENV",
           "PRIVATE_KEY_NAME", "PUBLIC_KEY_NAME", "SUBJECT_ENV"]
