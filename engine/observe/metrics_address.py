"""Where `--metrics` serves: a host and port read from the command line.

Kept apart from the exporter so the command line checks the flag without
loading prometheus-client.  A bare port binds loopback only: a job's
figures reach other machines only when the operator names an address that
reaches them (`0.0.0.0:PORT`, a LAN address).
"""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class MetricsAddress:
    """A host (name or IP address) and a TCP port; port 0 picks a free one."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{host}:{self.port}"


class MetricsBindError(Exception):
    """The metrics endpoint could not listen where it was asked to (the port is taken, …)."""


def parse_metrics_address(text: str) -> MetricsAddress:
    """`PORT` (loopback), `HOST:PORT` or `[IPV6]:PORT`; `ValueError` saying what is wrong."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = LOOPBACK, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not host:
        raise ValueError(
            f"{text!r}: name the host, e.g. 127.0.0.1:{port_text or 9464} "
            f"(0.0.0.0:{port_text or 9464} for every interface)"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number, e.g. 9464") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be between 0 and 65535")
    return MetricsAddress(host, port)
