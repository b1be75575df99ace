"""Files the same way everywhere: opening inputs (one InputError line per failure),
writing files that hold secrets, and the CSV cell rule shared by every CSV we write.

Every file pushcli writes that can hold a secret (private key, exports, reports,
the demo's subscriptions) goes through :func:`private_file`: a temporary file
created exclusively next to the target (``mkstemp``: O_CREAT|O_EXCL|O_NOFOLLOW,
random name, so nobody can plant a symlink or pre-create it), written, fsynced,
then renamed over the target. The result is a new inode with the requested mode,
so replacing an existing 0644 file (or a symlink planted at the target's name)
never leaves a secret in a readable file or writes through the link.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

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


# --- writing files that hold secrets ------------------------------------------------------


@contextlib.contextmanager
def private_file(path: str | os.PathLike[str], *, mode: int = 0o600, replace: bool = True,
                 binary: bool = False) -> Iterator[IO[Any]]:
    """Write ``path`` atomically with ``mode`` from its first byte.

    Yields a handle to a temporary file created exclusively in the target's
    folder; on a clean exit it is fsynced and renamed over ``path`` (or, when
    ``replace`` is false, hard-linked, which fails if ``path`` exists, so two
    writers cannot clobber each other: raises FileExistsError). On any error
    the temporary file is removed and ``path`` is untouched. Text handles are
    UTF-8 with ``newline=""`` (the csv module writes its own line endings).
    OSError propagates: callers turn it into their own one-line error.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; a public key asks for 0644
        handle: IO[Any] = (os.fdopen(fd, "wb") if binary
                           else os.fdopen(fd, "w", encoding="utf-8", newline=""))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)  # replaces a symlink itself, never what it points to
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --- CSV cells ---------------------------------------------------------------------------

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A cell a spreadsheet would run as a formula, after any number of our own prefixes:
# quoting those too makes neutralize/restore exact inverses (see restore_cell).
_NEEDS_PREFIX = re.compile(r"'*[=+\-@\t\r]")
_HAS_PREFIX = re.compile(r"'+[=+\-@\t\r]")


def neutralize_cell(value: Any) -> Any:
    """Stop spreadsheets from running a cell as a formula (CSV injection).

    A text cell starting with = + - @ tab or CR gets a leading ``'``; so does
    one that already starts with ``'`` followed by those, so that
    :func:`restore_cell` can undo exactly what was added. Non-text is unchanged.
    """
    if isinstance(value, str) and _NEEDS_PREFIX.match(value):
        return "'" + value
    return value


def restore_cell(text: str) -> str:
    """Undo :func:`neutralize_cell`: import reads back what export wrote.

    Drops one leading ``'`` only when ``'`` characters are followed by a formula
    character, which is exactly when neutralize_cell added one.
    """
    return text[1:] if _HAS_PREFIX.match(text) else text
