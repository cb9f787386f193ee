"""Frozen, stdlib-only data types shared by every layer.

``model.repo`` is what ``reconciler.config`` builds from an org repository,
``model.manifest`` is what the hub signs and agents verify, ``model.wg`` is the
desired/observed WireGuard state the planner diffs, and ``model.endpoints`` is
the live endpoint feed, ``model.firewall`` the host firewall (the ``inet
meshops`` nftables table) in its normal form and ``model.routing`` an
exit-node client's policy routing. Nothing here does I/O.
"""
