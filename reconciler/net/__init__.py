"""Host networking below the agent: link state, addresses, routes, policy
rules, and the host firewall.

``reconciler.net.iproute.IPRouteLinks`` is the only pyroute2 IPRoute user;
``reconciler.net.nftables.Nftables`` is the only code that runs ``nft``.
"""
