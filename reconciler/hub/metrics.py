"""Prometheus metrics of one hub process (the only prometheus-client user).

Created by ``reconciler.hub.serve`` (one private registry per hub, so tests
can run several hubs in one process) and updated by ``serve`` and ``api``;
``GET /metrics`` renders ``Metrics.render()``.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "meshops_hub_requests", "HTTP requests answered", ["route", "code"], registry=r
        )
        self.latency = Histogram(
            "meshops_hub_request_seconds",
            "HTTP request latency (long-poll waits excluded)",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.reports = Counter(
            "meshops_hub_reports_accepted", "endpoint reports committed", registry=r
        )
        self.report_batches = Histogram(
            "meshops_hub_report_batch_size",
            "reports per store transaction",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.store_commit = Histogram(
            "meshops_hub_store_commit_seconds",
            "time to commit one batch of reports (the fsync is in here)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.publishes = Counter(
            "meshops_hub_publishes", "publish pipeline runs", ["result"], registry=r
        )
        self.publish_seconds = Histogram(
            "meshops_hub_publish_seconds", "publish pipeline duration", registry=r
        )
        self.publish_failing = Gauge(
            "meshops_hub_publish_failing",
            "1 while the newest commit failed to publish (the last good one is served)",
            registry=r,
        )
        self.publish_failure = Gauge(
            "meshops_hub_publish_failure",
            "consecutive failed attempts of the commit that is not served, by its 12-digit "
            "commit, kind (temporary, permanent, internal) and error class; gone once it clears",
            ["commit", "kind", "error"],
            registry=r,
        )
        self.publish_retries = Counter(
            "meshops_hub_publish_retries", "builds of a commit that failed before", registry=r
        )
        self.next_retry = Gauge(
            "meshops_hub_publish_next_retry_timestamp",
            "unix time of the next attempt of the failing commit (0: none planned)",
            registry=r,
        )
        self.branch_found = Gauge(
            "meshops_hub_branch_found",
            "1 while the followed branch can be read, 0 while it cannot (see /v1/status)",
            registry=r,
        )
        self.connections = Gauge(
            "meshops_hub_connections",
            "open connections: handshake (TLS not finished), device (client certificate), "
            "anonymous (no client certificate)",
            ["kind"],
            registry=r,
        )
        self.connections_refused = Counter(
            "meshops_hub_connections_refused",
            "connections closed by the hub's limits: anonymous-cap, anonymous-deadline, "
            "body-timeout",
            ["reason"],
            registry=r,
        )
        self.last_success = Gauge(
            "meshops_hub_last_publish_success_timestamp", "unix time of the last good publish",
            registry=r,
        )
        self.manifest_serial = Gauge(
            "meshops_hub_manifest_serial", "serial of the manifest served", ["org"], registry=r
        )
        self.feed_revision = Gauge(
            "meshops_hub_feed_revision", "endpoint feed revision", ["org"], registry=r
        )
        self.long_polls = Gauge(
            "meshops_hub_long_polls", "long-poll requests waiting", ["kind"], registry=r
        )
        self.view_held = Counter(
            "meshops_hub_view_answers_held",
            "view answers whose connection was not read again until their wake round was over",
            registry=r,
        )
        self.auth_refused = Counter(
            "meshops_hub_auth_refused", "requests refused by authorization", ["reason"], registry=r
        )
        self.claims_refused = Counter(
            "meshops_hub_claims_refused", "reports refused for an address no peer may be sent to",
            ["reason"], registry=r
        )
        self.reflections_dropped = Counter(
            "meshops_hub_reflections_dropped",
            "observations of other devices not kept (not-a-relay, stale, ...)", ["reason"],
            registry=r
        )
        self.store_notifications = Counter(
            "meshops_hub_store_notifications",
            "PostgreSQL notifications of another replica's feed change (LISTEN meshops_feed)",
            registry=r,
        )
        self.store_listening = Gauge(
            "meshops_hub_store_listening",
            "1 while this replica LISTENs for other replicas' feed changes (PostgreSQL); 0: "
            "it learns of them by the fast periodic store poll only",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
