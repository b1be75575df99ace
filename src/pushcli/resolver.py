"""The DNS guard every transport resolves push-service hosts through.

The endpoint policy vets host names at import and send; this closes the gap
where a name resolves to 10.x, 127.x, 169.254.x ... at send time (DNS
rebinding). Hosts the operator allowed explicitly (the emulator, a staging
service) are exempt. Plain asyncio, so a send to https push services (libcurl)
never imports aiohttp.
"""

from __future__ import annotations

import asyncio
import socket

from pushcli.pushservices import address_allowed


class PrivateAddress(OSError):
    """A push-service host name resolved only to non-public addresses (DNS rebinding)."""


class GuardedResolver:
    """Resolves with the system resolver (in the loop's thread pool), but never hands
    out a private address for a host that is not allowed."""

    def __init__(self, allowed_hosts: frozenset[str]) -> None:
        self._allowed = allowed_hosts

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[str]:
        """The allowed addresses of ``host``, in the resolver's order, without repeats;
        PrivateAddress if it has none (OSError from the resolver as it comes)."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM)
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        public = [a for a in found if address_allowed(host, a, self._allowed)]
        if not public:
            raise PrivateAddress(f"{host} resolves to non-public address "
                                 f"{', '.join(sorted(found))}; not contacted")
        return public
