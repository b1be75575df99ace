"""HTTP/1.1 for plain-http origins: the emulator, web-push-testing, a staging service.

Real push services are all https (``pushcli.transport``, libcurl). aiohttp is
imported only when a send reaches a plain-http origin: it is about 25 MB of a
sender process that a real campaign never needs.

Same contract as ``CurlTransport.post``: an ``Answer``, or ``TransportError``
(``ambiguous`` when the request may have arrived), ``TransportTimeout``, or
``PrivateAddress`` from the DNS guard. No redirects, the engine's timeouts.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from pushcli.resolver import GuardedResolver, PrivateAddress
from pushcli.transport import Answer, TransportError, TransportTimeout, describe


class _GuardedAiohttpResolver(AbstractResolver):
    """The DNS guard in the shape aiohttp's connector asks for."""

    def __init__(self, guard: GuardedResolver) -> None:
        self._guard = guard

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": address, "port": port,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}
                for address in await self._guard.resolve(host, port, family)]

    async def close(self) -> None:
        return None


class PlainTransport:
    """One aiohttp session (a pool of keep-alive connections per origin)."""

    def __init__(self, guard: GuardedResolver, *, timeout: float, connect_timeout: float,
                 per_origin: int) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=per_origin,
                                         resolver=_GuardedAiohttpResolver(guard),
                                         ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=connect_timeout),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar())

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body``; the answer (body read only for a non-success, 1 KiB at most)."""
        sent = False
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                sent = True
                status = resp.status
                text = b"" if status in (201, 202) else await resp.content.read(1024)
                return Answer(status, resp.headers, text, http2=False)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddress):
                raise exc.os_error from None
            raise TransportError(describe(exc), ambiguous=False) from exc
        except TimeoutError as exc:  # the request may have arrived
            raise TransportTimeout("timeout", ambiguous=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            ambiguous = sent or isinstance(
                exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError)
            raise TransportError(describe(exc), ambiguous=ambiguous) from exc

    async def close(self) -> None:
        await self._session.close()
