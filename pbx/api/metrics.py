"""/metrics: the PBX in Prometheus text format.

Each API instance has its own `CollectorRegistry` (never the process-global
one), so two PBXs in one process, as in tests, do not mix their numbers.
PBX figures are read when scraped, from what the core already keeps:

- registrations and registered extensions (LocationService),
- active calls and calls by disposition (``B2BUA.calls`` / ``B2BUA.totals``;
  calls refused before ringing are counted by cause as well),
- RTP packets relayed, lost and dropped (``MediaRelay.totals()``),
- SIP messages (``SIPCore.stats``: received, malformed, stray responses;
  requests received by method, responses received and sent by status),
- API requests by route template, method and status (counted here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from pbx.core.cdr import DISPOSITIONS

__all__ = ["CONTENT_TYPE", "ApiMetrics", "PBXCollector"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class PBXCollector(Collector):
    """Reads the PBX's own counters at scrape time."""

    def __init__(self, pbx: Any) -> None:
        self.pbx = pbx

    def collect(self) -> Iterator[Metric]:
        pbx = self.pbx
        location = pbx.location
        aors = location.aors()
        yield GaugeMetricFamily("pbx_registrations", "Current SIP bindings (contacts).", value=len(location))
        yield GaugeMetricFamily(
            "pbx_registered_extensions", "Extensions with at least one current binding.",
            value=sum(1 for aor in aors if location.lookup(aor)),
        )  # fmt: skip
        yield GaugeMetricFamily("pbx_extensions", "Extensions known to the registrar.", value=len(pbx.directory))

        calls = list(pbx.b2bua.calls.values())
        active = GaugeMetricFamily("pbx_active_calls", "Calls in progress, by state.", labels=["state"])
        for state in ("ringing", "answered"):
            active.add_metric([state], sum(1 for c in calls if c.state == state))
        yield active

        totals = dict(pbx.b2bua.totals)
        by_disposition = CounterMetricFamily(
            "pbx_calls", "Calls ended since start, by disposition (refused calls count as failed or busy).",
            labels=["disposition"],
        )  # fmt: skip
        refused = CounterMetricFamily(
            "pbx_calls_refused", "Calls refused before ringing, by cause.", labels=["cause"]
        )
        counts = dict.fromkeys(DISPOSITIONS, 0)
        for key, value in sorted(totals.items()):
            if key in DISPOSITIONS:
                counts[key] += value
            else:
                refused.add_metric([key], value)
                counts["failed"] += value
        for disposition, value in counts.items():
            by_disposition.add_metric([disposition], value)
        yield by_disposition
        yield refused

        media = pbx.relay.totals()
        for name, key, text in (
            ("pbx_rtp_packets_relayed", "packets_relayed", "RTP packets relayed between the legs of calls."),
            ("pbx_rtp_bytes_relayed", "bytes_relayed", "RTP octets relayed between the legs of calls."),
            ("pbx_rtp_packets_lost", "packets_lost", "RTP packets lost on the way to the PBX (RFC 3550)."),
            ("pbx_rtp_packets_dropped", "packets_dropped", "RTP packets dropped from unexpected sources."),
        ):
            yield CounterMetricFamily(name, text, value=media.get(key, 0))
        yield GaugeMetricFamily("pbx_media_sessions", "Media sessions open.", value=media.get("sessions_active", 0))
        yield GaugeMetricFamily("pbx_rtp_ports_in_use", "RTP and RTCP ports bound.", value=media.get("ports_in_use", 0))

        sip = CounterMetricFamily(
            "pbx_sip_messages", "SIP messages seen by the core, by kind (SIPCore.stats).", labels=["kind"]
        )
        for kind, value in sorted(pbx.core.stats.items()):
            sip.add_metric([kind], value)
        yield sip
        requests = CounterMetricFamily(
            "pbx_sip_requests_received", "SIP requests received, by method.", labels=["method"]
        )
        for method, value in sorted(pbx.core.requests_received.items()):
            requests.add_metric([method], value)
        yield requests
        for name, text, counts in (
            ("pbx_sip_responses_received", "SIP responses received, by status.", pbx.core.responses_received),
            ("pbx_sip_responses_sent", "SIP responses sent by the PBX, by status.", pbx.core.responses_sent),
        ):
            family = CounterMetricFamily(name, text, labels=["status"])
            for status, value in sorted(counts.items()):
                family.add_metric([str(status)], value)
            yield family


class ApiMetrics:
    """The registry of one API instance, and the API's own request counter."""

    def __init__(self, pbx: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PBXCollector(pbx))
        self.requests = Counter(
            "pbx_api_requests", "REST API requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip

    def count_request(self, route: str, method: str, status: int) -> None:
        method = method if method in _METHODS else "OTHER"  # bounded label values
        self.requests.labels(route, method, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
