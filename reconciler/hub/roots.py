"""``GET /v1/orgs/{org}/roots/{N}``: an org's published trust root, version N.

Routed by ``reconciler.hub.api.make_app`` (``handler(HUB_KEY)``); the bytes
come from the current snapshot (``OrgSnapshot.roots``, filled by
``reconciler.hub.publish``), so a request sees one publish, never a mix.

Public, like the manifest: no client certificate is needed, because a root is
self-authenticating. An agent accepts root N+1 only when a threshold of root
N's keys and of its own signed it (``reconciler.pki.root.verify_next``), so a
hostile server can withhold roots but not forge one. Answers:

* 200, ``application/json``: the DSSE envelope, byte for byte as in
  ``orgs/ORG/roots/N.json``;
* 404 ``{"error": "no-root"}``: N is above the newest published version, or
  the org has no trust roots (a repository without ``roots/``);
* 404 ``{"error": "unknown-org"}``: the hub does not serve the org;
* 400 ``{"error": "bad-parameter"}``: N is not a version number (1 to 9
  decimal digits, no sign, no leading zero).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from reconciler.hub.snapshot import OrgSnapshot

_VERSION = re.compile(r"[1-9][0-9]{0,8}", re.ASCII)
CACHE_CONTROL = "public, max-age=300"  # a version's bytes never change; new versions appear


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def root_response(org_name: str, org: OrgSnapshot | None, version_text: str) -> web.Response:
    """The answer for ``/v1/orgs/{org_name}/roots/{version_text}`` (pure)."""
    if org is None:
        return _error(404, "unknown-org", f"org {org_name!r} is not served by this hub")
    if not _VERSION.fullmatch(version_text):
        shown = version_text if len(version_text) <= 24 else version_text[:20] + "…"
        return _error(400, "bad-parameter",
                      f"root version must be a positive decimal number, got {shown!r}")
    version = int(version_text)
    if version > len(org.roots):
        newest = f"the newest is {len(org.roots)}" if org.roots else "the org has no trust roots"
        return _error(404, "no-root",
                      f"org {org.org} has no published trust root {version}; {newest}")
    return web.Response(body=org.roots[version - 1], content_type="application/json",
                        headers={"Cache-Control": CACHE_CONTROL})


def handler(hub_key: web.AppKey[Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler, reading the hub from ``request.app[hub_key]``."""

    async def get_root(request: web.Request) -> web.Response:
        name = request.match_info["org"]
        return root_response(name, request.app[hub_key].org(name), request.match_info["version"])

    return get_root
