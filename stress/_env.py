"""Shared set-up for the stress scripts: the e2e ``Env`` without pytest."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pushcli.keys import generate_keys  # noqa: E402
from pushcli.testing import PushServiceEmulator  # noqa: E402
from tests.e2e.conftest import Env  # noqa: E402


@contextmanager
def e2e_env(seed: int = 1) -> Iterator[Env]:
    """A fresh folder with keys and a running emulator, like the ``e2e`` fixture."""
    with tempfile.TemporaryDirectory(prefix="pushcli-stress-") as d, \
            PushServiceEmulator(port=0, seed=seed) as emu:
        info = generate_keys(Path(d))
        yield Env(Path(d), emu, info.application_server_key)
