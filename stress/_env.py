"""Shared set-up for the stress scripts: the repository root on sys.path, so they run
as ``python stress/<script>.py`` and use the test harness (tests/support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import workspace as e2e_env  # noqa: E402

__all__ = ["e2e_env"]
