"""Prometheus metrics (prometheus-client), served by ``mailcase run`` on ``[metrics] listen``.

Recording is always on and cheap (in-process counters); only the HTTP
endpoint is optional. Metric names follow Prometheus conventions
(``mailcase_..._total`` for counters, base units in seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailcase.errors import ConfigError

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "mailcase_messages_total",
    "Fetched messages by mailbox and ledger disposition.",
    ["mailbox", "disposition"],
    registry=REGISTRY,
)
CASES_OPENED = Counter(
    "mailcase_cases_opened_total", "Cases opened, by mailbox.", ["mailbox"], registry=REGISTRY
)
NOTICES = Counter(
    "mailcase_notices_total",
    "Notices by outcome: of a delivery attempt (sent, deferred, failed, suppressed), or "
    "bounced (refused after it was sent, by a delivery report that came back).",
    ["outcome"],
    registry=REGISTRY,
)
POLL_SECONDS = Histogram(
    "mailcase_poll_duration_seconds",
    "Duration of one poll of one mailbox.",
    ["mailbox"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
ERRORS = Counter(
    "mailcase_errors_total",
    "Failures by what failed: imap (a mailbox's server, login or folder), smtp, "
    "template (a notice template, per mailbox) or storage (storage.directory, per mailbox).",
    ["protocol", "mailbox"],
    registry=REGISTRY,
)

_last_success: dict[str, float] = {}
_queued: list[int] = [0]


def poll_succeeded(mailbox: str) -> None:
    _last_success[mailbox] = time.time()


def seed_last_success(mailbox: str, at: float) -> None:
    """Take ``at`` (a Unix time: the database's last successful poll, or the daemon's
    start for a mailbox that never polled successfully) as ``mailbox``'s last
    success, unless this process has already seen a later one.

    The daemon calls it at start for every configured mailbox, so one that stays
    broken across a restart, or was never read at all, keeps a growing
    ``mailcase_seconds_since_last_successful_poll`` instead of no series.
    """
    if at > _last_success.get(mailbox, float("-inf")):
        _last_success[mailbox] = at


def set_queued(count: int) -> None:
    _queued[0] = count


class _Live(Collector):
    """Values computed at scrape time: seconds since each mailbox's last good poll (every
    mailbox the daemon seeded or saw succeed), and the outbox's queue."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        since = GaugeMetricFamily(
            "mailcase_seconds_since_last_successful_poll",
            "Seconds since the last successful poll of each mailbox "
            "(since the daemon started, for one never polled successfully).",
            labels=["mailbox"],
        )
        now = time.time()
        for mailbox, at in sorted(_last_success.items()):
            since.add_metric([mailbox], now - at)
        yield since
        queued = GaugeMetricFamily(
            "mailcase_notices_queued", "Notices waiting in the outbox (at the last delivery run)."
        )
        queued.add_metric([], _queued[0])
        yield queued


REGISTRY.register(_Live())


def serve(listen: str) -> WSGIServer:
    """Serve /metrics on ``host:port`` in a daemon thread; ``shutdown()`` the result to stop.

    Raises ConfigError naming ``metrics.listen`` when the address cannot be bound (in
    use, not this host's, a name that does not resolve): restarting will not help.
    """
    host, _, port = listen.rpartition(":")
    try:
        server, _thread = start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=REGISTRY
        )
    except OSError as exc:  # socket.gaierror too
        raise ConfigError(
            f"metrics.listen {listen}: cannot listen there ({exc.strerror or exc})"
        ) from exc
    except OverflowError as exc:  # a port the config check let through; it does not
        raise ConfigError(f"metrics.listen {listen}: the port is out of range") from exc
    return server
