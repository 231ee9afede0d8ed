"""`--metrics` addresses: a bare port stays on loopback; anything wider is written out."""

from __future__ import annotations

import pytest

from engine.observe.metrics_address import MetricsAddress, parse_metrics_address


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9464", MetricsAddress("127.0.0.1", 9464)),
        ("127.0.0.1:9464", MetricsAddress("127.0.0.1", 9464)),
        ("0.0.0.0:9464", MetricsAddress("0.0.0.0", 9464)),
        ("localhost:0", MetricsAddress("localhost", 0)),
        ("[::1]:9464", MetricsAddress("::1", 9464)),
    ],
)
def test_an_address_is_read_as_written_and_a_bare_port_binds_loopback(
    text: str, address: MetricsAddress
) -> None:
    assert parse_metrics_address(text) == address


def test_an_ipv6_address_prints_in_brackets() -> None:
    assert str(MetricsAddress("::1", 9464)) == "[::1]:9464"
    assert str(MetricsAddress("127.0.0.1", 9464)) == "127.0.0.1:9464"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (":9464", "name the host, e.g. 127.0.0.1:9464 (0.0.0.0:9464 for every interface)"),
        ("metrics", "the port must be a number"),
        ("127.0.0.1:http", "the port must be a number"),
        ("127.0.0.1:70000", "between 0 and 65535"),
        ("-1", "between 0 and 65535"),
        ("::1:9464", "in brackets"),
    ],
)
def test_a_bad_address_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_metrics_address(text)
    assert says in str(refused.value)
    assert repr(text) in str(refused.value)
