"""Exceptions every layer raises, and the exit codes the CLI maps them to.

Library code never prints or exits; it raises one of these and ``cli`` turns it
into one line on stderr and the documented exit code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

EXIT_OK = 0
EXIT_PARTIAL = 1  # some subscribers failed / some records rejected / doctor found a problem
EXIT_INPUT = 2  # invalid input: usage, file, campaign, key
EXIT_STORE = 74  # EX_IOERR: the store could not be written; nothing lost, re-run to finish
EXIT_BUSY = 75  # EX_TEMPFAIL: another run holds the lock
EXIT_INTERRUPTED = 130  # Ctrl-C


class PushcliError(Exception):
    """Base class: a failure that the CLI reports as one line."""

    exit_code = EXIT_PARTIAL


class InputError(PushcliError):
    """Bad input, located as precisely as we know: ``file:line: field: message``."""

    exit_code = EXIT_INPUT

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        if self.field:
            where += f"{self.field}: "
        return where + self.message


class KeyFileError(InputError):
    """The VAPID key is missing, unreadable, unsafe or would be overwritten."""


class PayloadTooLarge(InputError):
    """A rendered notification does not fit one aes128gcm record."""


@contextlib.contextmanager
def listening(host: str, port: int) -> Iterator[None]:
    """A server that cannot bind (the port is taken, the address is not on this
    machine) fails as one line naming the address, exit 1, for every server command."""
    try:
        yield
    except OSError as exc:
        raise PushcliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class StoreError(PushcliError):
    """The store could not be read or written (disk full, read-only, database down).

    The message is one line and never carries SQL parameters (endpoints, auth
    secrets). Whatever was not written is still pending: re-running finishes it.
    """

    exit_code = EXIT_STORE


class Busy(PushcliError):
    """Another process holds the lock we need."""

    exit_code = EXIT_BUSY
