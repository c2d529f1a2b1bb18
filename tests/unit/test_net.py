"""Client IP resolution behind trusted proxies (scalekit._net)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit._net import (
    ClientIP,
    ForwardedHeader,
    parse_forwarded,
    parse_x_forwarded_for,
    resolve_client_ip,
)


def scope(peer: str | None, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(name.lower().encode(), value.encode("latin-1")) for name, value in headers],
    }


def test_peer_is_the_client_without_trusted_proxies() -> None:
    assert ClientIP()(scope("203.0.113.9")) == "203.0.113.9"


def test_missing_client_is_unknown() -> None:
    assert ClientIP()(scope(None)) == "unknown"
    assert ClientIP(["127.0.0.1"])(scope(None)) == "unknown"


def test_spoofed_header_from_untrusted_peer_is_ignored() -> None:
    resolve = ClientIP(["10.0.0.0/8"])
    request = scope("198.51.100.7", ("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=5.6.7.8"))
    assert resolve(request) == "198.51.100.7"


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=5))
def test_untrusted_peer_cannot_choose_its_key(spoofed: list[str]) -> None:
    resolve = ClientIP(["10.0.0.0/8"])
    request = scope("198.51.100.7", ("X-Forwarded-For", ", ".join(spoofed)))
    assert resolve(request) == "198.51.100.7"


def test_trusted_proxy_forwards_the_client() -> None:
    resolve = ClientIP(["127.0.0.1/32"])
    assert resolve(scope("127.0.0.1", ("X-Forwarded-For", "203.0.113.9"))) == "203.0.113.9"


def test_left_entries_made_up_by_the_client_are_not_used() -> None:
    resolve = ClientIP(["127.0.0.1"])
    request = scope("127.0.0.1", ("X-Forwarded-For", "6.6.6.6, 203.0.113.9"))
    assert resolve(request) == "203.0.113.9"


def test_chain_of_trusted_proxies_is_walked_from_the_right() -> None:
    resolve = ClientIP(["10.0.0.0/8", "192.168.0.0/16"])
    request = scope("10.0.0.1", ("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 192.168.1.1, 10.9.9.9"))
    assert resolve(request) == "203.0.113.9"


def test_repeated_x_forwarded_for_headers_are_one_list() -> None:
    resolve = ClientIP(["10.0.0.0/8"])
    request = scope(
        "10.0.0.1", ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.9, 10.0.0.2")
    )
    assert resolve(request) == "203.0.113.9"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    resolve = ClientIP(["10.0.0.0/8"])
    assert resolve(scope("10.0.0.1", ("X-Forwarded-For", "10.1.1.1, 10.2.2.2"))) == "10.1.1.1"


def test_trusted_peer_without_header_is_the_client() -> None:
    assert ClientIP(["10.0.0.0/8"])(scope("10.0.0.1")) == "10.0.0.1"


def test_garbage_entry_stops_at_the_last_known_hop() -> None:
    resolve = ClientIP(["10.0.0.0/8"])
    assert resolve(scope("10.0.0.1", ("X-Forwarded-For", "not-an-ip, 10.0.0.2"))) == "10.0.0.2"
    assert resolve(scope("10.0.0.1", ("X-Forwarded-For", "<script>"))) == "10.0.0.1"


def test_forwarded_header_syntax() -> None:
    values = [
        'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"',
        "For=198.51.100.17;proto=https",
        'for="_hidden", proto=http',
    ]
    assert parse_forwarded(values) == [
        "192.0.2.60",
        "[2001:db8:cafe::17]:4711",
        "198.51.100.17",
        "_hidden",
        "",
    ]


def test_forwarded_quoted_comma_does_not_split() -> None:
    assert parse_forwarded(['for="1.2.3.4";x="a,b", for=5.6.7.8']) == ["1.2.3.4", "5.6.7.8"]


def test_a_client_sent_forwarded_header_does_not_override_x_forwarded_for() -> None:
    # nginx appends the peer to X-Forwarded-For and passes the client's own
    # Forwarded header through untouched: reading Forwarded "when present"
    # let every request choose its address
    resolve = ClientIP(["127.0.0.1"])
    for spoofed in ("for=1.1.1.1", 'for="[2001:db8::1]:4711"', "for=6.6.6.6, for=7.7.7.7"):
        request = scope(
            "127.0.0.1", ("Forwarded", spoofed), ("X-Forwarded-For", "6.6.6.6, 203.0.113.9")
        )
        assert resolve(request) == "203.0.113.9"


@given(
    forwarded=st.lists(st.ip_addresses().map(str), max_size=4),
    real_ip=st.lists(st.ip_addresses().map(str), max_size=2),
)
def test_only_the_configured_header_is_read(forwarded: list[str], real_ip: list[str]) -> None:
    client_headers = [
        *(("Forwarded", f'for="{address}"') for address in forwarded),
        *(("X-Real-IP", address) for address in real_ip),
    ]
    resolve = ClientIP(["127.0.0.1"])
    request = scope("127.0.0.1", *client_headers, ("X-Forwarded-For", "203.0.113.9"))
    assert resolve(request) == "203.0.113.9"


def test_forwarded_header_when_configured() -> None:
    resolve = ClientIP(["127.0.0.1"], header="forwarded")
    request = scope(
        "127.0.0.1",
        ("X-Forwarded-For", "6.6.6.6"),
        ("Forwarded", 'for=1.1.1.1, for="[2001:db8::1]:4711"'),
    )
    assert resolve(request) == "2001:db8::1"


def test_an_unclosed_quote_cannot_swallow_the_element_the_proxy_appended() -> None:
    # nginx: proxy_set_header Forwarded "$http_forwarded, for=$remote_addr". A
    # client that opened a quote and never closed it made the proxy's element
    # part of its own, and its own for= the client address.
    resolve = ClientIP(["127.0.0.1"], header="forwarded")
    for sent in ('for=6.6.6.6;x="', 'for=6.6.6.6;by="a\\"', 'for="6.6.6.6', '"'):
        for element, client in (
            ("for=203.0.113.9", "203.0.113.9"),
            ('for="[2001:db8::9]"', "2001:db8::9"),
        ):
            request = scope("127.0.0.1", ("Forwarded", f"{sent}, {element}"))
            assert resolve(request) == client, sent


FORWARDED_TEXT = st.text(alphabet='"\\,;= for[]:.6abc', max_size=30)


@given(sent=FORWARDED_TEXT, client=st.ip_addresses())
def test_whatever_forwarded_value_a_client_sends_the_proxy_element_decides(
    sent: str, client: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    element = f'for="[{client}]"' if client.version == 6 else f"for={client}"
    resolve = ClientIP(["127.0.0.1"], header="forwarded", ipv6_prefix=None)
    request = scope("127.0.0.1", ("Forwarded", f"{sent}, {element}"))
    expected = client.ipv4_mapped if client.version == 6 and client.ipv4_mapped else client
    assert resolve(request) == str(expected)


def test_x_real_ip_when_configured() -> None:
    resolve = ClientIP(["127.0.0.1"], header=ForwardedHeader.X_REAL_IP)
    request = scope(
        "127.0.0.1",
        ("X-Forwarded-For", "6.6.6.6"),
        ("Forwarded", "for=7.7.7.7"),
        ("X-Real-IP", "203.0.113.9"),
    )
    assert resolve(request) == "203.0.113.9"
    assert resolve(scope("127.0.0.1", ("X-Forwarded-For", "6.6.6.6"))) == "127.0.0.1"
    assert resolve(scope("198.51.100.7", ("X-Real-IP", "203.0.113.9"))) == "198.51.100.7"


def test_forwarded_header_is_a_str_enum_accepting_its_names() -> None:
    assert ForwardedHeader("x-real-ip") is ForwardedHeader.X_REAL_IP
    assert ForwardedHeader("X-Forwarded-For") is ForwardedHeader.X_FORWARDED_FOR
    assert ForwardedHeader.FORWARDED == "forwarded"
    with pytest.raises(ValueError, match=r"'x-forwarded-for', 'forwarded', 'x-real-ip'.*'auto'"):
        ForwardedHeader.parse("auto")


def test_ipv4_with_port_in_forwarded_chain() -> None:
    resolve = ClientIP(["127.0.0.1"], header="forwarded")
    assert resolve(scope("127.0.0.1", ("Forwarded", 'for="203.0.113.9:8080"'))) == "203.0.113.9"


def test_ipv6_peer_grouped_by_64() -> None:
    resolve = ClientIP(ipv6_prefix=64)
    assert resolve(scope("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert resolve(scope("2001:db8:1:2:bbbb::9")) == "2001:db8:1:2::/64"
    assert resolve(scope("2001:db8:1:3::1")) == "2001:db8:1:3::/64"
    assert resolve(scope("203.0.113.9")) == "203.0.113.9"


def test_ipv6_full_address_without_grouping() -> None:
    assert ClientIP()(scope("2001:db8::1")) == "2001:db8::1"


def test_ipv6_trusted_proxy_and_forwarded_client_grouped() -> None:
    resolve = ClientIP(["fd00::/8"], ipv6_prefix=64)
    request = scope("fd00::1", ("X-Forwarded-For", "2001:db8:5:6:7::8"))
    assert resolve(request) == "2001:db8:5:6::/64"


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    resolve = ClientIP(["127.0.0.1"])
    assert resolve(scope("::ffff:127.0.0.1", ("X-Forwarded-For", "203.0.113.9"))) == "203.0.113.9"


@given(st.ip_addresses(v=6))
def test_every_ipv6_address_groups_into_its_64(address: ipaddress.IPv6Address) -> None:
    if address.ipv4_mapped is not None:
        return
    grouped = ClientIP(ipv6_prefix=64)(scope(str(address)))
    assert address in ipaddress.ip_network(grouped)


def test_bad_cidr_fails_at_construction_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        ClientIP(["10.0.0.0/33"])


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0", "0.0.0.0/0.0.0.0", " ::/0 "])
def test_trusting_every_peer_is_refused(everyone: str) -> None:
    # Every hop trusted, the walk ended at the leftmost X-Forwarded-For entry:
    # the one the client wrote. Any client chose its address, silently.
    with pytest.raises(ValueError, match="trusts every peer, so any client chooses"):
        ClientIP(["10.0.0.0/8", everyone])


def test_a_string_of_proxies_is_refused_with_what_to_write() -> None:
    # iterated character by character it failed on '1' for "10.0.0.0/8"
    with pytest.raises(ValueError, match=r"must be a list .* got the string '10.0.0.0/8'"):
        ClientIP("10.0.0.0/8")


def test_bad_prefix_and_header_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="ipv6_prefix"):
        ClientIP(ipv6_prefix=129)
    with pytest.raises(ValueError, match="header"):
        ClientIP(header="via")


def test_parse_x_forwarded_for_splits_and_strips() -> None:
    assert parse_x_forwarded_for([" 1.1.1.1 ,2.2.2.2", "", "3.3.3.3"]) == [
        "1.1.1.1",
        "2.2.2.2",
        "3.3.3.3",
    ]


def test_one_off_function() -> None:
    request = scope("127.0.0.1", ("X-Forwarded-For", "203.0.113.9"))
    assert resolve_client_ip(request, ["127.0.0.1"]) == "203.0.113.9"
    assert resolve_client_ip(request) == "127.0.0.1"
