"""Opening input files the same way everywhere: one InputError line per failure."""

from __future__ import annotations

import os
from typing import IO

from pushcli.errors import InputError


def open_input(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a file for binary reading, or raise InputError naming it and why."""
    source = os.fspath(path)
    try:
        return open(source, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise InputError("no such file", file=source) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", file=source) from None
    except PermissionError:
        raise InputError("permission denied", file=source) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=source) from None
