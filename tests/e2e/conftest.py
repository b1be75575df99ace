"""End-to-end fixtures: a real emulator on loopback, real keys, pushcli in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pushcli.keys import generate_keys
from pushcli.testing import PushServiceEmulator


@dataclass
class Env:
    dir: Path
    emu: PushServiceEmulator
    server_key: str  # applicationServerKey

    @property
    def db(self) -> Path:
        return self.dir / "pushcli.db"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"PUSHCLI_DB": str(self.db), "PUSHCLI_ALLOW_HOSTS": "127.0.0.1",
                    "PUSHCLI_VAPID_PRIVATE_KEY": str(self.dir / "vapid_private.pem"),
                    "NO_COLOR": "1"})
        env.update(extra)
        return env

    def pushcli(self, *args: str, check: bool = False, timeout: float = 120,
                **env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "pushcli", *args], cwd=self.dir,
                              env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """Start ``pushcli ARGS`` in the background (for kill/interrupt/concurrency tests)."""
        return subprocess.Popen([sys.executable, "-m", "pushcli", *args], cwd=self.dir,
                                env=self.env(**env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def wait_until(self, stat: str, at_least: int, timeout: float = 60) -> None:
        """Wait until the emulator's ``stats()[stat]`` reaches ``at_least``."""
        deadline = time.monotonic() + timeout
        while self.emu.stats()[stat] < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"emulator {stat} stayed below {at_least} for {timeout} s")
            time.sleep(0.05)

    def subscribe(self, n: int, *, key: str | None = None, **fields: object) -> list[dict]:
        subs = self.emu.create_subscriptions(n, key or self.server_key)
        for s in subs:
            s.update(fields)
        return subs

    def import_subs(self, subs: list[dict], *extra: str) -> dict:
        path = self.dir / f"subs-{len(list(self.dir.glob('subs-*')))}.json"
        path.write_text(json.dumps(subs))
        proc = self.pushcli("subscribers", "import", str(path), "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def campaign(self, name: str = "e2e", body: str = "Hello {{ first_name | default('you') }}",
                 extra: str = "") -> Path:
        path = self.dir / f"{name}.yml"
        path.write_text(
            f"name: {name}\n"
            "notification:\n"
            "  title: Big news\n"
            f"  body: \"{body}\"\n"
            "  url: https://shop.example.com/news\n"
            "  icon: https://shop.example.com/icon.png\n"
            "vapid:\n"
            "  subject: mailto:ops@shop.example.com\n" + extra
        )
        return path

    def send(self, campaign: Path, *args: str, **env: str) -> tuple[int, dict]:
        proc = self.pushcli("send", str(campaign), "--json", *args, **env)
        assert proc.returncode in (0, 1, 130), f"{proc.returncode}: {proc.stderr}"
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def emulator():
    with PushServiceEmulator(port=0, seed=1) as emu:
        yield emu


@pytest.fixture
def e2e(tmp_path: Path, emulator: PushServiceEmulator) -> Env:
    info = generate_keys(tmp_path)
    return Env(tmp_path, emulator, info.application_server_key)
