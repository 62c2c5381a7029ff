"""Fetching a URL for the browser tool, with the SSRF guard and the size limit.

Owns: http(s) only; every address a host name resolves to must be public (not private, loopback,
link-local, multicast, reserved, shared or unspecified) unless private addresses are allowed; the
connection goes to the address that was checked (so a second DNS answer cannot swap in an
internal one), redirects are followed by hand and each hop is checked again; at most `max_bytes`
of body are read (a longer page is cut with a visible note). Must not know pages or sessions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
MAX_REDIRECTS = 5
USER_AGENT = "gptoss-serve-browser/1.0"


class FetchError(Exception):
    """A URL that cannot be shown; the message is what the model sees."""


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    content_type: str
    text: str
    truncated: bool


def is_public(ip: IPAddress) -> bool:
    """True for globally routable unicast addresses (IPv4-mapped IPv6 judged as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class Fetcher:
    """GETs pages for `browser.open`."""

    def __init__(self, *, allow_private: bool = False, max_bytes: int = 2_000_000,
                 timeout: float = 15.0, resolver: Resolver = system_resolver,
                 address_allowed: Callable[[IPAddress], bool] = is_public) -> None:
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._resolve = resolver
        self._allowed = address_allowed

    async def fetch(self, url: str) -> Fetched:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False,
                                     follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                request = await self._request(client, url)
                response = await client.send(request, stream=True)
                try:
                    location = response.headers.get("location")
                    if response.is_redirect and location:
                        url = urljoin(url, location)
                        continue
                    if response.status_code >= 400:
                        raise FetchError(f"HTTP {response.status_code} for `{url}`")
                    return await self._read(response, url)
                finally:
                    await response.aclose()
        raise FetchError(f"too many redirects (more than {MAX_REDIRECTS}) from `{url}`")

    async def _request(self, client: httpx.AsyncClient, url: str) -> httpx.Request:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(f"only http and https URLs can be opened, not `{url}`")
        headers = {"User-Agent": USER_AGENT, "Accept": "text/html, text/plain, */*;q=0.5"}
        if self.allow_private:
            return client.build_request("GET", url, headers=headers)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self._checked_address(host, port)
        netloc = f"[{address}]" if ":" in address else address
        if parts.port:
            netloc += f":{parts.port}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers["Host"] = parts.netloc.rpartition("@")[2]
        return client.build_request("GET", pinned, headers=headers,
                                    extensions={"sni_hostname": host})

    async def _checked_address(self, host: str, port: int) -> str:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(a) for a in await self._resolve(host, port)]
            except (OSError, ValueError) as exc:
                raise FetchError(f"cannot resolve `{host}`: {exc}") from None
        if not addresses:
            raise FetchError(f"cannot resolve `{host}`")
        refused = [str(a) for a in addresses if not self._allowed(a)]
        if refused:
            raise FetchError(f"refused to open `{host}`: it resolves to a private or local "
                             f"address ({', '.join(refused)})")
        return str(addresses[0])

    async def _read(self, response: httpx.Response, url: str) -> Fetched:
        body = bytearray()
        truncated = False
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                del body[self.max_bytes:]
                truncated = True
                break
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        charset = response.charset_encoding or "utf-8"
        try:
            text = body.decode(charset, errors="replace")
        except LookupError:
            text = body.decode("utf-8", errors="replace")
        return Fetched(url=url, content_type=content_type, text=text, truncated=truncated)
