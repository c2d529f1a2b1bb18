"""The client IP of an ASGI request behind trusted proxies.

The rate limiter and the access log both ask :class:`ClientIP` so they agree
on who the client is. One header carries the client address, chosen by
configuration (:class:`ForwardedHeader`: ``X-Forwarded-For`` by default,
``Forwarded`` or ``X-Real-IP``), never by what a request contains: a proxy
that appends to ``X-Forwarded-For`` passes a client's own ``Forwarded``
header through untouched, so reading whichever header is present would let
the client choose its address. The header is read only when the TCP peer is
a trusted proxy; its chain is then walked from the right, skipping trusted
proxies, and the first address that is not one is the client. A client
cannot move its key by sending its own header: an untrusted peer's headers
are ignored, and behind a trusted proxy the left-hand entries it made up are
never reached.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from scalekit.errors import ConfigurationError

__all__ = [
    "ClientIP",
    "ForwardedHeader",
    "parse_forwarded",
    "parse_x_forwarded_for",
    "resolve_client_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"


class ForwardedHeader(enum.StrEnum):
    """The request header a trusted proxy puts the client address in.

    - ``x-forwarded-for``: the comma-separated chain nginx
      (``$proxy_add_x_forwarded_for``), HAProxy (``option forwardfor``) and
      cloud load balancers append to.
    - ``forwarded``: RFC 7239 ``Forwarded: for=…`` (Envoy, some CDNs).
    - ``x-real-ip``: one address the proxy sets (``proxy_set_header X-Real-IP
      $remote_addr``), replacing whatever the client sent.
    """

    X_FORWARDED_FOR = "x-forwarded-for"
    FORWARDED = "forwarded"
    X_REAL_IP = "x-real-ip"

    @classmethod
    def _missing_(cls, value: object) -> ForwardedHeader | None:
        # header names are case-insensitive: "X-Forwarded-For" is accepted too
        if isinstance(value, str):
            lowered = value.strip().lower()
            for member in cls:
                if member.value == lowered:
                    return member
        return None

    @classmethod
    def parse(
        cls, value: ForwardedHeader | str, *, setting: str = "forwarded_header"
    ) -> ForwardedHeader:
        """``value`` as a member, or a ``ValueError`` that names the choices.

        Raises:
            ValueError: ``value`` is not one of the three header names.
        """
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in cls)
            raise ConfigurationError(
                f"{setting} must be one of {choices} (the header your proxy sets), got {value!r}"
            ) from None


def _parse_address(value: str) -> IPAddress | None:
    """An IP from a header entry: bare, ``[v6]:port``, ``v4:port``; None if not an IP."""
    value = value.strip().strip('"').strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # IPv4 with a port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_x_forwarded_for(values: Iterable[str]) -> list[str]:
    """The entries of one or more ``X-Forwarded-For`` headers, left to right."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        # A quote the client opened and never closed would swallow the elements a
        # proxy appended after it ("for=6.6.6.6;x=\"" + ", for=<client>"): a
        # malformed value is split as if it had no quotes, so the proxy's stay whole.
        return value.split(separator)
    parts.append("".join(current))
    return parts


def parse_forwarded(values: Iterable[str]) -> list[str]:
    """The ``for=`` values of one or more RFC 7239 ``Forwarded`` headers, left to right.

    An element without ``for=`` yields an empty string so the chain keeps its length.
    """
    result: list[str] = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            if not element.strip():
                continue
            found = ""
            for pair in _split_outside_quotes(element, ";"):
                name, sep, raw = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    found = raw.strip().strip('"')
            result.append(found)
    return result


def _normalise(address: IPAddress, ipv6_prefix: int | None) -> str:
    if ipv6_prefix is not None and isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, ipv6_prefix), strict=False)
        return str(network)
    return str(address)


class ClientIP:
    """Resolves the client IP of an ASGI scope.

    Args:
        trusted_proxies: CIDRs (or single addresses) of the proxies whose
            forwarding headers are believed, e.g. ``["10.0.0.0/8", "127.0.0.1"]``.
        ipv6_prefix: group IPv6 clients by this prefix length (``64`` keys a
            whole /64 as one client); ``None`` keeps full addresses.
        header: the one header that carries the client address from a trusted
            proxy (a :class:`ForwardedHeader` or its name); any other
            forwarding header in the request is ignored.

    Raises:
        ValueError: a CIDR that does not parse or trusts every address
            (``0.0.0.0/0``, ``::/0``), a string instead of a list, a prefix
            outside 0..128, or an unknown header choice.
    """

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        *,
        ipv6_prefix: int | None = None,
        header: ForwardedHeader | str = ForwardedHeader.X_FORWARDED_FOR,
    ) -> None:
        if isinstance(trusted_proxies, str):
            raise ConfigurationError(
                f"trusted_proxies must be a list of addresses or CIDRs such as ['10.0.0.0/8'], "
                f"got the string {trusted_proxies!r}"
            )
        networks: list[IPNetwork] = []
        for cidr in trusted_proxies:
            try:
                network = ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError as exc:
                raise ConfigurationError(
                    f"trusted_proxies: {cidr!r} is not an IP address or CIDR "
                    "(write e.g. '10.0.0.0/8' or '127.0.0.1')"
                ) from exc
            if network.prefixlen == 0:
                # Every hop trusted: the walk ends at the leftmost entry, which the
                # client wrote itself (X-Forwarded-For: <anything>, <its address>).
                raise ConfigurationError(
                    f"trusted_proxies: {cidr!r} trusts every peer, so any client chooses "
                    "its own address by sending the forwarding header; list your proxies' "
                    "addresses or ranges instead (e.g. '10.0.0.0/8')"
                )
            networks.append(network)
        if ipv6_prefix is not None and not 0 <= ipv6_prefix <= 128:
            raise ConfigurationError(f"ipv6_prefix must be between 0 and 128, got {ipv6_prefix!r}")
        self.header = ForwardedHeader.parse(header, setting="header")
        self.trusted_proxies: tuple[IPNetwork, ...] = tuple(networks)
        self.ipv6_prefix = ipv6_prefix
        self._header_name = self.header.value.encode("latin-1")
        self._is_trusted = lru_cache(maxsize=1024)(self._is_trusted_uncached)

    def _is_trusted_uncached(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted_proxies)

    def __call__(self, scope: Any) -> str:
        """The client IP of ``scope`` as a string (``"unknown"`` when there is no peer)."""
        client = scope.get("client")
        peer_text = client[0] if client else None
        if not peer_text:
            return UNKNOWN
        if not self.trusted_proxies and (self.ipv6_prefix is None or ":" not in peer_text):
            return str(peer_text)  # the fast path: nothing to parse
        peer = _parse_address(str(peer_text))
        if peer is None:  # a unix socket path or similar: nothing to resolve
            return str(peer_text)
        if not self.trusted_proxies or not self._is_trusted(peer):
            return _normalise(peer, self.ipv6_prefix)
        chain = self._chain(scope.get("headers") or ())
        return _normalise(self._walk(chain, peer), self.ipv6_prefix)

    def _chain(self, headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
        wanted = self._header_name
        values = [value.decode("latin-1") for name, value in headers if name.lower() == wanted]
        if self.header is ForwardedHeader.FORWARDED:
            return parse_forwarded(values)
        # X-Real-IP is one address per header; several headers walk like a chain
        return parse_x_forwarded_for(values)

    def _walk(self, chain: list[str], peer: IPAddress) -> IPAddress:
        # Right to left: each entry was appended by the hop to its right, which
        # we trust; stop at the first address that is not a trusted proxy. An
        # entry that is not an IP ends the walk at the last hop we could read.
        nearest = peer
        for entry in reversed(chain):
            address = _parse_address(entry)
            if address is None:
                return nearest
            if not self._is_trusted(address):
                return address
            nearest = address
        return nearest


def resolve_client_ip(
    scope: Any,
    trusted_proxies: Iterable[str] = (),
    *,
    ipv6_prefix: int | None = None,
    header: ForwardedHeader | str = ForwardedHeader.X_FORWARDED_FOR,
) -> str:
    """One-off form of :class:`ClientIP`; build a ``ClientIP`` once for per-request use."""
    return ClientIP(trusted_proxies, ipv6_prefix=ipv6_prefix, header=header)(scope)
