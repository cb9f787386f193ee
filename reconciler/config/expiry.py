"""Device expiry (``expires:`` in a device file) applied at a given time.

* ``without_expired(repo, now)`` is called by ``reconciler.hub.publish`` on
  every publish: a device whose ``expires`` has passed is treated exactly as
  a disabled one (``disabled=True``), so it gets no certificate (its current
  one is revoked), leaves every manifest and every peer drops it. The repo
  object is returned unchanged when nothing expired, so the publisher's
  per-org caches keep hitting.
* ``expiry_warnings(repo, now)`` is called by ``meshops validate``: one
  warning (severity ``warning``, exit code unchanged) per device that has
  expired or expires within ``WARN_DAYS`` days, at its ``expires`` line.

Expiry takes effect at the hub's next publish: a commit, or the periodic
re-publish (``hub serve``, every 6 hours by default), which also renews
certificates. ``now`` is always a parameter.
"""

from __future__ import annotations

from reconciler import structs
from reconciler.errors import Problem
from reconciler.model.repo import Repo
from reconciler.policy.review import WARN_DAYS, expiring


def without_expired(repo: Repo, now: float) -> Repo:
    orgs = dict(repo.orgs)
    changed = False
    for name, state in repo.orgs.items():
        gone = {n: d for n, d in state.devices.items() if not d.disabled and d.expired(now)}
        if gone:
            devices = dict(state.devices)
            devices.update({n: structs.replace(d, disabled=True) for n, d in gone.items()})
            orgs[name] = structs.replace(state, devices=devices)
            changed = True
    return structs.replace(repo, orgs=orgs) if changed else repo


def expiry_warnings(repo: Repo, now: float, within_days: int = WARN_DAYS) -> tuple[Problem, ...]:
    out = []
    for item in expiring(repo, now, within_days):
        src = repo.orgs[item.org].devices[item.device].source
        if item.expired:
            message = (f"device {item.org}/{item.device} expired at {item.expires}; it is "
                       "out of the mesh")
            remedy = "delete the file, or move expires: later to bring it back"
        else:
            message = (f"device {item.org}/{item.device} expires at {item.expires} "
                       f"(in {item.days_left:.1f} days)")
            remedy = "move expires: later if the device should stay"
        out.append(Problem(src.file, src.line("expires"), "W-DEVICE-EXPIRING", message, remedy,
                           severity="warning"))
    return tuple(out)
