"""Images named by an https address, fetched once when an announcement is saved.

Whoever writes an announcement (the editor, the API, a file) may name its image by an address.
The service fetches it then, and only then, into the media store; at send time no channel fetches
an address someone typed. Fetching on someone's behalf is a server-side request forgery risk: the
address could lead into the service's own network. So:

- https only, without user name or password;
- the host is resolved here and refused if *any* of its addresses is not public (loopback,
  private, link-local, shared 100.64/10, multicast, reserved, unspecified, and IPv6 forms that
  embed such an IPv4 address);
- the connection goes to exactly the addresses checked: the connector's resolver answers from
  them, so a second DNS answer cannot swap in another (DNS rebinding);
- redirects are followed here, at most ``max_redirects``, each target checked the same way;
- at most ``max_bytes`` (a larger Content-Length is refused before reading), no compression,
  ``timeout`` seconds for everything.

The caller checks that the bytes are an image (``media.store`` sniffs them). The address check,
the resolver and the TLS context are part of the ``FetchPolicy``, so tests can run a local https
server and allow 127.0.0.1 for it alone.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bzi_broadcast.errors import BroadcastError
from bzi_broadcast.i18n import N_
from bzi_broadcast.i18n import gettext as _

Address = IPv4Address | IPv6Address
Resolve = Callable[[str, int], Awaitable[list[Address]]]
MAX_BYTES = 8 * 1024 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
_SHARED = ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ip_network("64:ff9b::/96")  # an IPv4 address behind NAT64 (RFC 6052)


class RemoteImageRefused(BroadcastError):
    """Das Bild unter dieser Adresse lässt sich nicht übernehmen."""


_DEFAULT_MESSAGES = (N_("Das Bild unter dieser Adresse lässt sich nicht übernehmen."),)


def is_public(address: Address) -> bool:
    """Whether ``address`` is on the public internet, including any IPv4 address embedded in an
    IPv6 one (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour]
        embedded += [address.teredo[1] if address.teredo else None]
        if address in _NAT64:
            embedded.append(IPv4Address(int(address) & 0xFFFFFFFF))
        if any(e is not None and not is_public(e) for e in embedded):
            return False
    special = (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or getattr(address, "is_site_local", False)
        or (isinstance(address, IPv4Address) and address in _SHARED)
    )
    return address.is_global and not special


async def system_resolve(host: str, port: int) -> list[Address]:
    """Every address name ``host`` resolves to."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    allowed: Callable[[Address], bool] = is_public
    resolve: Resolve = system_resolve
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)  # None: the system's
    max_bytes: int = MAX_BYTES
    max_redirects: int = 3
    timeout: float = 10.0


async def fetch_image(url: str, policy: FetchPolicy) -> bytes:
    """The bytes at https ``url`` under ``policy``; ``RemoteImageRefused`` saying why not."""
    try:
        async with asyncio.timeout(policy.timeout):
            return await _follow(URL(url), policy)
    except TimeoutError:
        reason = _("keine Antwort innerhalb von {seconds} Sekunden").format(
            seconds=f"{policy.timeout:g}"
        )
        raise _refused(url, reason) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        reason = _("nicht abrufbar ({reason})").format(reason=type(exc).__name__)
        raise _refused(url, reason) from exc


async def _follow(url: URL, policy: FetchPolicy) -> bytes:
    pins: dict[str, list[Address]] = {}
    connector = aiohttp.TCPConnector(
        resolver=_PinnedResolver(pins), ssl=policy.ssl_context or True, use_dns_cache=False
    )
    headers = {"User-Agent": "bzi-broadcast", "Accept": "image/*", "Accept-Encoding": "identity"}
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, auto_decompress=False, trust_env=False
    ) as session:
        for _hop in range(policy.max_redirects + 1):
            await _vet(url, policy, pins)
            async with session.get(url, allow_redirects=False) as response:
                if response.status in REDIRECTS and "Location" in response.headers:
                    url = url.join(URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    reason = _("der Server antwortete mit {status}").format(status=response.status)
                    raise _refused(str(url), reason)
                return await _read(response, url, policy.max_bytes)
    reason = _("mehr als {count} Weiterleitungen").format(count=policy.max_redirects)
    raise _refused(str(url), reason)


async def _vet(url: URL, policy: FetchPolicy, pins: dict[str, list[Address]]) -> None:
    """Refuse ``url`` unless it is https to a host whose every address is allowed; pin those."""
    if url.scheme != "https" or not url.host:
        raise _refused(str(url), _("nur https-Adressen werden übernommen"))
    if url.user is not None or url.password is not None:
        raise _refused(str(url), _("die Adresse darf keinen Benutzernamen enthalten"))
    try:
        addresses = _literal(url.host) or await policy.resolve(url.host, url.port or 443)
    except OSError:
        raise _refused(
            str(url), _("den Server {host} gibt es nicht").format(host=url.host)
        ) from None
    if not addresses or not all(policy.allowed(a) for a in addresses):
        reason = _("der Server {host} liegt nicht im öffentlichen Internet").format(host=url.host)
        raise _refused(str(url), reason)
    pins[url.host] = addresses


def _literal(host: str) -> list[Address]:
    try:
        return [ip_address(host)]
    except ValueError:
        return []


async def _read(response: aiohttp.ClientResponse, url: URL, cap: int) -> bytes:
    """At most ``cap`` bytes; one more (or a larger Content-Length) is a refusal."""
    too_large = _("größer als {limit} MB").format(limit=f"{cap / 2**20:g}")
    if (response.content_length or 0) > cap:
        raise _refused(str(url), too_large)
    data = bytearray()
    while len(data) <= cap and (chunk := await response.content.read(min(CHUNK, cap + 1))):
        data.extend(chunk)
    if len(data) > cap:
        raise _refused(str(url), too_large)
    return bytes(data)


class _PinnedResolver(AbstractResolver):
    """Answers only with the addresses ``_vet`` checked for each host, never asks DNS again."""

    def __init__(self, pins: dict[str, list[Address]]) -> None:
        self._pins = pins

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self._pins:
            raise OSError(f"{host} was not checked")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self._pins[host]
        ]

    async def close(self) -> None:
        pass


def _refused(url: str, reason: str) -> RemoteImageRefused:
    shown = url if len(url) <= 200 else url[:199] + "…"
    return RemoteImageRefused(_("Bild {url}: {reason}").format(url=shown, reason=reason))
