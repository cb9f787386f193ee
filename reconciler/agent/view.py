"""This device's view from the hub: snapshot, signed deltas, the held copy.

Called by ``agent.source`` (``obtain``) on every pass of an agent with a hub;
the format and the delta logic are ``reconciler.pki.view``, the hub's side
``reconciler.hub.views``.

A pass asks ``GET /v1/orgs/ORG/devices/NAME/view?serial=S&revision=R&wait=N``
with the position of the view it holds (``view.json`` in the state dir), or
without a position for a snapshot. The answer is verified as strictly as a
manifest (``pki.view.open_view``: signature, payload type, org, the
snapshot's device), applied (a delta must chain onto the held view; one that
does not makes this pass fetch a snapshot at once), and the result checked
again as a manifest: its schema (``manifest_from_dict``), expiry, an issue time
in this device's future, and the rollback floor (the last applied serial).

The held view is kept as plain JSON after it verified, with a SHA-256 line
that detects a corrupt file (``view.json``: written by ``agent.commit`` only
once a pass converged on it, 0600). It is not re-verified each pass: the
state dir also holds this device's private keys, so whoever can rewrite it
owns the device anyway. A pass whose long-poll says nothing changed therefore
reads one file and parses it without the schema walk.

When the hub has no view endpoint (404) or is unreachable and no view is held
yet, the caller falls back to the org manifest (``agent.source.obtain_manifest``).
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.agent.config import AgentConfig
from reconciler.agent.fetch import FetchLike
from reconciler.agent.inputs import VerifiedManifest
from reconciler.agent.state import StateDir
from reconciler.errors import FetchError, ManifestRefused
from reconciler.model.manifest import Manifest
from reconciler.pki.envelope import Trust
from reconciler.pki.manifest import DEFAULT_MAX_SKEW, SchemaViolation
from reconciler.pki.view import (
    HeldView,
    ViewMismatch,
    apply_delta,
    held_from_snapshot,
    open_view,
)


def view_url(config: AgentConfig) -> str:
    assert config.hub is not None
    return f"{config.hub.rstrip('/')}/v1/orgs/{config.org}/devices/{config.name}/view"


@dataclass(frozen=True)
class Got:
    view: HeldView
    manifest: Manifest
    source: str  # fetched | unchanged | cache
    kind: str  # snapshot | delta | none


def check_manifest(held: HeldView, now: float, floor: int, *, max_skew: float | None,
                   checked: bool) -> Manifest:
    """The held view as a ``Manifest``, refused like a manifest would be."""
    try:
        manifest = held.manifest_model(check=checked)
    except (SchemaViolation, TypeError, KeyError, ValueError) as exc:
        raise ManifestRefused("schema", f"the view is not a valid manifest: {exc}") from exc
    if manifest.org != held.org:
        raise ManifestRefused("wrong-org", f"the view of org {held.org!r} holds a manifest "
                                           f"of org {manifest.org!r}")
    if now > manifest.not_after:
        raise ManifestRefused("expired", f"view serial {manifest.serial} expired at "
                                         f"{manifest.not_after}")
    if max_skew is not None and manifest.issued_at > now + max_skew:
        raise ManifestRefused(
            "future", f"view serial {manifest.serial} was issued at {manifest.issued_at}, "
                      f"{manifest.issued_at - now:.0f} s in this device's future: check the "
                      "clocks of the hub and this device (NTP)")
    if manifest.serial < floor:
        raise ManifestRefused("rollback", f"view serial {manifest.serial} is below the last "
                                          f"applied serial {floor}")
    return manifest


def obtain_view(config: AgentConfig, fetch: FetchLike, trust: Trust, state: StateDir,
                now: float, *, wait: int | None, warnings: list[str]) -> VerifiedManifest:
    """Fetch, verify and apply; on ``FetchError`` re-use the held view (fail-static)
    while it has not expired. Raises ``FetchError`` when nothing is held and the
    hub cannot be reached, ``ConfigError`` on a 4xx (404: no view endpoint)."""
    held = state.load_view(config.org, config.name)
    floor = state.last_serial()
    skew = config.max_clock_skew if config.max_clock_skew is not None else DEFAULT_MAX_SKEW
    try:
        got = _fetch(config, fetch, trust, held, now, floor, wait=wait, skew=skew,
                     warnings=warnings)
    except FetchError as exc:
        if held is None:
            raise
        try:
            manifest = check_manifest(held, now, floor, max_skew=None, checked=False)
        except ManifestRefused as refused:
            raise FetchError(f"{exc}; the held view (serial {held.serial}) cannot be used: "
                             f"{refused}", exc.delay) from exc
        return _verified(Got(held, manifest, "cache", "none"),
                         f"hub unreachable ({exc}); re-applied the held view serial "
                         f"{manifest.serial}")
    return _verified(got, None)


def _fetch(config: AgentConfig, fetch: FetchLike, trust: Trust, held: HeldView | None,
           now: float, floor: int, *, wait: int | None, skew: float | None,
           warnings: list[str]) -> Got:
    url = view_url(config)
    if held is not None:
        resp = fetch.get(f"{url}?serial={held.serial}&revision={held.revision}",
                         wait=wait, kind="manifest")
        if resp.status == 304:
            manifest = check_manifest(held, now, floor, max_skew=None, checked=False)
            return Got(held, manifest, "unchanged", "none")
        opened = open_view(resp.body, trust, config.org, config.name)
        try:
            if opened.kind == "delta":
                new = apply_delta(held, opened.doc)
                manifest = check_manifest(new, now, floor, max_skew=skew, checked=True)
                return Got(new, manifest, "fetched", "delta")
        except (ViewMismatch, ManifestRefused) as exc:
            if isinstance(exc, ManifestRefused) and exc.reason != "schema":
                raise
            warnings.append(f"view delta not applied ({exc}); fetched a snapshot")
        else:
            new = _newer_snapshot(held, held_from_snapshot(opened.doc))
            manifest = check_manifest(new, now, floor, max_skew=skew, checked=True)
            return Got(new, manifest, "fetched", "snapshot")
    resp = fetch.get(url, kind="manifest")
    opened = open_view(resp.body, trust, config.org, config.name)
    if opened.kind != "snapshot":
        raise ManifestRefused("schema", "the hub answered a request for a snapshot with a delta")
    new = held_from_snapshot(opened.doc)
    manifest = check_manifest(new, now, floor, max_skew=skew, checked=True)
    return Got(new, manifest, "fetched", "snapshot")


def _newer_snapshot(held: HeldView, new: HeldView) -> HeldView:
    """A snapshot may not move the position back: an older serial is refused by
    the floor (``check_manifest``), an older feed revision at the same serial
    here (as ``agent.source`` refuses an older feed)."""
    if new.serial == held.serial and new.revision < held.revision:
        raise ManifestRefused("rollback", f"view snapshot at feed revision {new.revision} is "
                                          f"older than the held revision {held.revision}")
    return new


def _verified(got: Got, warning: str | None) -> VerifiedManifest:
    return VerifiedManifest(got.manifest, b"", None, got.source, warning, None,
                            view=got.view, feed=got.view.feed_model(), view_kind=got.kind)
