"""VAPID keys (RFC 8292): generate, load safely, applicationServerKey, and a
JWT signer that signs once per push-service origin and reuses the token.

The private key is the one irreplaceable secret: every subscription is bound to
its public half, so losing or overwriting it orphans the whole subscriber list.
Hence: files created 0600 from the first byte, no silent overwrite, and a
refusal to use a key file that others can read.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid02

from pushcli.defaults import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, SUBJECT_ENV
from pushcli.encoding import b64url_encode
from pushcli.errors import InputError, KeyFileError
from pushcli.files import private_file
from pushcli.pushservices import vapid_subject_problem

if TYPE_CHECKING:
    from pushcli.campaign import Campaign


#: JWT lifetime. RFC 8292 caps ``exp`` at 24 h; we stay well inside it and
#: renew an hour before expiry so a token never dies mid-request.
TOKEN_LIFETIME = 12 * 3600
TOKEN_RENEW_MARGIN = 3600


def validate_subject(subject: str, *, field: str = "subject") -> str:
    """A VAPID ``sub`` every push service accepts (the one rule, in pushservices).

    Apple answers 403 BadJwtToken for a ``localhost`` host, spaces or angle
    brackets, so we refuse those here rather than after a send.
    """
    problem = vapid_subject_problem(subject)
    if problem is not None:
        raise InputError(problem, field=field)
    return subject


@dataclass(frozen=True)
class KeyInfo:
    """What `keys generate`/`keys show` report. Never holds the private key."""

    private_key: Path | None
    public_key: Path | None
    application_server_key: str
    subject: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "private_key": str(self.private_key) if self.private_key else None,
            "public_key": str(self.public_key) if self.public_key else None,
            "application_server_key": self.application_server_key,
            "subject": self.subject,
        }


def application_server_key(vapid: Vapid02) -> str:
    """base64url of the 65-byte uncompressed public point, as pushManager.subscribe wants."""
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return b64url_encode(raw)


def _write_new_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write atomically with ``mode`` from creation; never exposes a partial file.

    Without ``replace`` the final step is a hard link, which fails if the target
    appeared meanwhile, so a concurrent generate cannot clobber a key either.
    """
    try:
        with private_file(path, mode=mode, replace=replace, binary=True) as fh:
            fh.write(data)
    except FileExistsError:
        raise KeyFileError("already exists; refusing to overwrite it", file=str(path)) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write: {exc.strerror or exc}", file=str(path)) from None


def generate_keys(
    directory: str | os.PathLike[str] = ".",
    *,
    subject: str | None = None,
    force: bool = False,
) -> KeyInfo:
    """Create ``vapid_private.pem`` (0600) and ``vapid_public.pem`` in ``directory``.

    Refuses to replace an existing private key unless ``force``: a new key
    orphans every subscription made with the old one.
    """
    if subject is not None:
        validate_subject(subject)
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create directory: {exc.strerror}", file=str(folder)) from None
    private_path = folder / PRIVATE_KEY_NAME
    public_path = folder / PUBLIC_KEY_NAME
    if private_path.exists() and not force:
        raise KeyFileError(
            "already exists; refusing to overwrite it: every subscription is tied to this key "
            "and a new one would orphan them all (use --force to replace it anyway)",
            file=str(private_path),
        )
    vapid = Vapid02()
    vapid.generate_keys()
    _write_new_file(private_path, vapid.private_pem(), 0o600, replace=force)
    _write_new_file(public_path, vapid.public_pem(), 0o644, replace=True)
    return KeyInfo(private_path, public_path, application_server_key(vapid), subject)


def load_private_key(path: str | os.PathLike[str], *, check_mode: bool = True) -> Vapid02:
    """Load a PEM private key, refusing a missing, unreadable or exposed file.

    py-vapid's ``from_file`` silently creates a key when the file is missing,
    which would make a typo in a path generate a stranger's key: we read the
    file ourselves.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyFileError(
            "no such file (create one with: pushcli keys generate)", file=str(p)
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError("is not a regular file", file=str(p))
    try:
        data = p.read_bytes()
    except PermissionError:
        raise KeyFileError("permission denied", file=str(p)) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read: {exc.strerror or exc}", file=str(p)) from None
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        # Checked before the mode: advising `chmod 600` on a public key misleads.
        raise KeyFileError(
            f"is the public key; pass the private key ({PRIVATE_KEY_NAME}, made next to it "
            "by pushcli keys generate)",
            file=str(p),
        )
    if check_mode and st.st_mode & 0o077:
        raise KeyFileError(
            f"private key is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {p}",
            file=str(p),
        )
    try:
        return Vapid02.from_pem(data)
    except Exception:  # noqa: BLE001 - py-vapid raises assorted types; message only
        raise KeyFileError("not a PEM-encoded P-256 private key", file=str(p)) from None


def vapid_key_path(campaign: Campaign | None, key: str | os.PathLike[str] | None) -> Path:
    """Which private key a command uses: ``--key`` (or PUSHCLI_VAPID_PRIVATE_KEY),
    else the campaign's ``vapid.private_key``, else ``vapid_private.pem`` here."""
    if key is not None:
        return Path(key)
    if campaign is not None and campaign.vapid.private_key:
        return Path(campaign.vapid.private_key)
    return Path(PRIVATE_KEY_NAME)


def vapid_subject(campaign: Campaign | None, subject: str | None) -> str:
    """Which VAPID subject a command uses, checked by the one subject rule.

    ``--subject`` (or PUSHCLI_VAPID_SUBJECT) wins over the campaign's
    ``vapid.subject`` (already checked when the campaign loaded). Missing
    altogether is an error naming where to set it.
    """
    if subject:
        return validate_subject(subject, field=f"--subject ({SUBJECT_ENV})")
    if campaign is not None and campaign.vapid.subject:
        return validate_subject(campaign.vapid.subject, field="vapid.subject")
    raise InputError(
        f"no VAPID subject: set vapid.subject in the campaign, --subject or {SUBJECT_ENV}",
        file=campaign.source if campaign is not None else None,
        field="vapid.subject" if campaign is not None else None,
    )


def resolve_vapid(campaign: Campaign | None, key: str | os.PathLike[str] | None,
                  subject: str | None) -> VapidSigner:
    """The signer a send would use, or the error it would stop with.

    One function for ``send``, ``send --dry-run`` and ``doctor``, so a dry run
    fails exactly where the send would: no or bad subject, a missing,
    unreadable or world-readable key, or the public key given as ``--key``.
    """
    chosen_subject = vapid_subject(campaign, subject)
    return VapidSigner(load_private_key(vapid_key_path(campaign, key)), chosen_subject)


def show_key(path: str | os.PathLike[str]) -> KeyInfo:
    """The applicationServerKey of an existing private key (file mode not enforced)."""
    vapid = load_private_key(path, check_mode=False)
    return KeyInfo(Path(path), None, application_server_key(vapid))


class VapidSigner:
    """Signs one JWT per push-service origin and reuses it until near expiry.

    Signing costs ~30 µs; a campaign of a million messages to four services
    needs four signatures, not a million.
    """

    def __init__(
        self,
        vapid: Vapid02,
        subject: str,
        *,
        clock: Callable[[], float] = time.time,
        lifetime: int = TOKEN_LIFETIME,
    ) -> None:
        if lifetime > 24 * 3600 or lifetime <= TOKEN_RENEW_MARGIN:
            raise ValueError("lifetime must be within (1 h, 24 h]")
        self._vapid = vapid
        self._subject = validate_subject(subject)
        self._clock = clock
        self._lifetime = lifetime
        self._cache: dict[str, tuple[str, float]] = {}
        self.signatures = 0
        self.public_key = application_server_key(vapid)

    @property
    def subject(self) -> str:
        return self._subject

    def private_pem(self) -> bytes:
        """The key, for handing to a sender process over a pipe (never logged)."""
        return self._vapid.private_pem()

    def header(self, origin: str) -> str:
        """The ``Authorization`` header value for an endpoint origin (``aud``)."""
        now = self._clock()
        cached = self._cache.get(origin)
        if cached is not None and cached[1] - now > TOKEN_RENEW_MARGIN:
            return cached[0]
        exp = int(now) + self._lifetime
        signed = self._vapid.sign({"aud": origin, "exp": exp, "sub": self._subject})
        value = signed["Authorization"]
        self._cache[origin] = (value, exp)
        self.signatures += 1
        return value
