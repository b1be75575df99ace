"""End-to-end fixtures: a real emulator on loopback, real keys, pushcli in a subprocess.

Thin wrappers over tests/support.py, the one harness (``Workspace``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pushcli.testing import PushServiceEmulator
from tests import support
from tests.support import Workspace


@pytest.fixture
def emulator() -> Iterator[PushServiceEmulator]:
    with support.emulator(seed=1) as emu:
        yield emu


@pytest.fixture
def e2e(tmp_path: Path, emulator: PushServiceEmulator) -> Workspace:
    return Workspace.create(tmp_path, emulator)
