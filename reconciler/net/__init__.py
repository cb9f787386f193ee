"""Host networking below the agent: link state, addresses and routes.

``reconciler.net.iproute.IPRouteLinks`` is the only pyroute2 IPRoute user.
"""
