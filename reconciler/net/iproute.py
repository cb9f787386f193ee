"""Link state, addresses and routes of one interface, optionally in a netns.

The only user of pyroute2's ``IPRoute``. The agent builds an
``IPRouteLinks(netns=...)`` and injects it into a WireGuard backend
(``reconciler.backends.open_backend(kind, links=...)``); the backend calls
``observe`` / ``apply`` / ``create_wireguard``.

* ``observe(name)`` reads ``ip -j [-n NS] addr show dev NAME`` and
  ``ip -j route show``: importing pyroute2 costs ~0.2 s, which would eat the
  whole budget of a no-op ``meshops agent apply``. pyroute2 is imported
  lazily, only when there is a change to make.
* ``apply(ops)`` carries out ``SetMtu``, ``SetLinkUp``, ``Add/RemoveAddress``
  and ``Add/RemoveRoute`` with ``IPRoute(netns=NS, flags=0)``: ``flags=0``
  makes a missing namespace an error instead of silently creating it.
  Adding what exists (``NetlinkError(17)``) and deleting what is gone are
  tolerated; routes use ``replace``.
* Observed routes are the interface's ``main``-table routes that the kernel
  did not add itself (``proto kernel`` prefix routes are left out). IPv6
  link-local addresses are reported; the planner ignores them.
* IP forwarding (``observe(...).forwarding``, ``SetForwarding``) is read and
  written through ``reconciler.net.sysctl.Sysctl`` in the same namespace:
  ``net.ipv4.ip_forward``, plus ``net.ipv6.conf.all.forwarding`` when the
  interface has (or is about to get) a global IPv6 address. In a named
  namespace the read is one more concurrent process (``ip netns exec NS
  sysctl ...``); in the current one it is two file reads. An unreadable
  value is reported as ``None``.

* Policy routing of an exit-node client (``observe_routing(table)``,
  ``AddPolicyRule``/``RemovePolicyRule``/``AddTableRoute``/``RemoveTableRoute``):
  read with ``ip -j -4/-6 rule show`` and ``ip -j route show table T``
  (only the rules at ``reconciler.model.routing.PRIORITIES`` are meshops'),
  written with pyroute2 (``IPRoute.rule``; ``suppress_prefixlen`` is the
  kernel's ``FRA_SUPPRESS_PREFIXLEN``). Adding what exists and deleting what
  is gone are tolerated.

Errors are translated here: ``BackendUnavailable`` for a missing interface
or namespace (it may be starting), ``BackendError`` for anything refused.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from reconciler.converge.ops import (
    ROUTING_OPS,
    AddAddress,
    AddPolicyRule,
    AddRoute,
    AddTableRoute,
    Operation,
    RemoveAddress,
    RemovePolicyRule,
    RemoveRoute,
    RemoveTableRoute,
    SetForwarding,
    SetLinkUp,
    SetMtu,
)
from reconciler.errors import BackendError, BackendUnavailable
from reconciler.model.routing import PRIORITIES, PolicyRouting, PolicyRule, TableRoute
from reconciler.model.wg import ObservedInterface
from reconciler.net.sysctl import (
    FORWARD_KEYS,
    Sysctl,
    forwarding_keys,
    forwarding_state,
)

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)


def _run_many(cmds: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run the ``ip`` reads concurrently: a pass pays one process start-up, not three."""
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in cmds
    ]
    out = []
    for cmd, proc in zip(cmds, procs, strict=True):
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return out


def parse_addr_json(name: str, text: str) -> ObservedInterface:
    """``ip -j addr show dev NAME`` output -> link part of an ``ObservedInterface``."""
    entries = json.loads(text or "[]")
    if not entries:
        return ObservedInterface(name=name, exists=False)
    link = entries[0]
    flags = link.get("flags", [])
    addresses = tuple(
        f"{info['local']}/{info['prefixlen']}"
        for info in link.get("addr_info", [])
        if info.get("family") in ("inet", "inet6") and "local" in info
    )
    return ObservedInterface(
        name=name,
        exists=True,
        up="UP" in flags,
        mtu=int(link.get("mtu", 0)),
        addresses=addresses,
    )


def parse_route_json(text: str) -> tuple[str, ...]:
    """``ip -j route show dev NAME`` output -> the routes meshops manages."""
    out = []
    for route in json.loads(text or "[]"):
        if route.get("protocol") == "kernel" or route.get("type", "unicast") != "unicast":
            continue
        dst = route.get("dst", "")
        if dst == "default":
            dst = "::/0" if ":" in route.get("gateway", "") else "0.0.0.0/0"
        out.append(str(ipaddress.ip_network(dst, strict=False)))
    return tuple(out)


_TABLE_NAMES = {"main": 254, "local": 255, "default": 253}
FIB_RULE_INVERT = 2  # linux/fib_rules.h


def parse_rule_json(family: int, text: str) -> frozenset[PolicyRule]:
    """``ip -j -4|-6 rule show`` -> meshops' rules (those at ``PRIORITIES``)."""
    out = set()
    for r in json.loads(text or "[]"):
        prio = r.get("priority")
        if prio not in PRIORITIES:
            continue
        table = r.get("table", "main")
        table_id = _TABLE_NAMES.get(table) if not str(table).isdigit() else int(table)
        mark = r.get("fwmark")
        to = None
        if "dst" in r and r["dst"] != "all":
            length = r.get("dstlen", 32 if family == 4 else 128)
            to = str(ipaddress.ip_network(f"{r['dst']}/{length}", strict=False))
        out.add(PolicyRule(
            family=family, priority=int(prio), table=table_id if table_id is not None else -1,
            fwmark=int(str(mark).partition("/")[0], 0) if mark is not None else None,
            invert="not" in r, to=to, suppress_prefixlength=r.get("suppress_prefixlen")))
    return frozenset(out)


def parse_table_json(table: int, text: str, family: int = 4) -> frozenset[TableRoute]:
    """``ip -j -4|-6 route show table T`` -> its routes."""
    out = set()
    for route in json.loads(text or "[]"):
        dst = route.get("dst", "")
        if dst == "default":
            dst = "::/0" if family == 6 else "0.0.0.0/0"
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        out.add(TableRoute(str(net), table, str(route.get("dev", ""))))
    return frozenset(out)


def _ignore(exc: Exception, *codes: int) -> bool:
    return getattr(exc, "code", None) in codes


class IPRouteLinks:
    """``LinkControl`` for one network namespace (``None`` = the current one)."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        run: Runner = _run,
        iproute_factory: Callable[[], Any] | None = None,
        sysctl: Sysctl | None = None,
    ) -> None:
        self.netns = netns
        self._run = run
        self._factory = iproute_factory
        self._ipr: Any = None
        self.sysctl = sysctl if sysctl is not None else Sysctl(netns, run=run)

    # -- observe (cheap: no pyroute2) ------------------------------------------
    def _ip(self, *args: str) -> list[str]:
        return ["ip", *(("-n", self.netns) if self.netns else ()), "-j", *args]

    def observe(self, name: str) -> ObservedInterface:
        cmds = [
            self._ip("addr", "show", "dev", name),
            self._ip("-4", "route", "show", "table", "main", "dev", name),
            self._ip("-6", "route", "show", "table", "main", "dev", name),
        ]
        fwd_cmd = self.sysctl.read_command(FORWARD_KEYS)
        fwd_res: subprocess.CompletedProcess[str] | None = None
        if self._run is _run:
            res, *route_res = _run_many(cmds + ([fwd_cmd] if fwd_cmd else []))
            if fwd_cmd:
                fwd_res = route_res.pop()
        else:  # an injected runner (tests): one call at a time
            res = self._run(cmds[0])
            route_res = [self._run(cmd) for cmd in cmds[1:]] if res.returncode == 0 else []
            if fwd_cmd and res.returncode == 0:
                fwd_res = self._run(fwd_cmd)
        if res.returncode != 0:
            if "does not exist" in res.stderr:
                return ObservedInterface(name=name, exists=False)
            raise BackendUnavailable(
                f"cannot read interface {name}"
                + (f" in netns {self.netns}" if self.netns else "")
                + f": {res.stderr.strip()}"
            )
        state = parse_addr_json(name, res.stdout)
        if not state.exists:
            return state
        routes: list[str] = []
        for r in route_res:
            if r.returncode != 0:
                raise BackendUnavailable(f"cannot read routes of {name}: {r.stderr.strip()}")
            routes += parse_route_json(r.stdout)
        return ObservedInterface(
            name=name,
            exists=True,
            up=state.up,
            mtu=state.mtu,
            addresses=state.addresses,
            routes=tuple(routes),
            forwarding=forwarding_state(self.sysctl.read(FORWARD_KEYS, fwd_res), state.addresses),
        )

    def observe_routing(self, table: int, fwmark: int = 0) -> PolicyRouting:
        """meshops' policy rules and the routes of ``table`` (``ip -j``, no pyroute2).
        ``fwmark`` is echoed back: the mark lives on the WireGuard interface."""
        rules: set[PolicyRule] = set()
        routes: set[TableRoute] = set()
        cmds = [self._ip(f"-{family}", "rule", "show") for family in (4, 6)]
        # both families' rules at once (one process start-up to wait for, not two);
        # an injected runner (tests) is called one command at a time, as needed
        ruled = _run_many(cmds) if self._run is _run else (self._run(cmd) for cmd in cmds)
        for family, res in zip((4, 6), ruled, strict=True):
            if res.returncode != 0:
                raise BackendUnavailable(f"cannot read ip rules: {res.stderr.strip()}")
            found = parse_rule_json(family, res.stdout)
            rules |= found
            if not any(r.table == table for r in found):
                # without our rule nothing looks the table up: it is not read (two
                # fewer processes on every pass of a device that uses no exit node);
                # the rule is always added last and removed first (plan_routing)
                continue
            res = self._run(self._ip(f"-{family}", "route", "show", "table", str(table)))
            if res.returncode != 0:
                if "does not exist" in res.stderr:
                    continue  # an empty table does not exist
                raise BackendUnavailable(f"cannot read routing table {table}: "
                                         f"{res.stderr.strip()}")
            routes |= parse_table_json(table, res.stdout, family)
        return PolicyRouting(frozenset(rules), frozenset(routes), fwmark)

    # -- apply (pyroute2, imported only here) ---------------------------------
    def _iproute(self) -> Any:
        if self._ipr is not None:
            return self._ipr
        if self._factory is not None:
            self._ipr = self._factory()
            return self._ipr
        from pyroute2 import IPRoute  # lazy: ~0.2 s to import

        try:
            self._ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
        except FileNotFoundError as exc:
            raise BackendUnavailable(f"network namespace {self.netns} does not exist") from exc
        except OSError as exc:
            raise BackendError(f"cannot open netlink: {exc.strerror or exc}") from exc
        return self._ipr

    def _index(self, ipr: Any, name: str) -> int:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise BackendUnavailable(f"interface {name} does not exist (yet)")
        return int(found[0])

    def apply(self, ops: Sequence[Operation]) -> None:
        link_ops = [
            op
            for op in ops
            if isinstance(op, (SetMtu, SetLinkUp, SetForwarding, AddAddress, RemoveAddress,
                               AddRoute, RemoveRoute, *ROUTING_OPS))
        ]
        for op in link_ops:
            if isinstance(op, SetForwarding):  # a sysctl, not netlink: no pyroute2 needed
                self._set_forwarding(op, ops)
                continue
            ipr = self._iproute()
            try:
                self._apply_op(ipr, op)
            except (BackendError, BackendUnavailable):
                raise
            except Exception as exc:  # pyroute2 NetlinkError and friends
                raise _translate(exc, str(op), op.interface) from exc

    def _set_forwarding(self, op: SetForwarding, ops: Sequence[Operation]) -> None:
        """``net.ipv4.ip_forward`` (and IPv6 forwarding when the interface has,
        or gets in this batch, a global IPv6 address) := 1 (or 0)."""
        res = self._run(self._ip("addr", "show", "dev", op.interface))
        current = parse_addr_json(op.interface, res.stdout).addresses if res.returncode == 0 else ()
        removed = {o.address for o in ops if isinstance(o, RemoveAddress)}
        added = [o.address for o in ops if isinstance(o, AddAddress)]
        addresses = [a for a in current if a not in removed] + added
        value = "1" if op.enabled else "0"
        for key in forwarding_keys(addresses):
            self.sysctl.write(key, value, what=f"{op} for {op.interface}")

    def _apply_rule(self, ipr: Any, op: AddPolicyRule | RemovePolicyRule) -> None:
        r = op.rule
        kw: dict[str, Any] = {"family": 10 if r.family == 6 else 2, "priority": r.priority,
                              "table": r.table}
        if r.fwmark is not None:
            kw["fwmark"] = r.fwmark
        if r.invert:
            kw["flags"] = FIB_RULE_INVERT
        if r.to is not None:
            net = ipaddress.ip_network(r.to)
            kw.update(dst=str(net.network_address), dst_len=net.prefixlen)
        if r.suppress_prefixlength is not None:
            kw["suppress_prefixlen"] = r.suppress_prefixlength
        add = isinstance(op, AddPolicyRule)
        try:
            ipr.rule("add" if add else "del", **kw)
        except Exception as exc:
            if (add and _ignore(exc, errno.EEXIST)) or (not add and _ignore(exc, errno.ENOENT)):
                return
            raise

    def _apply_op(self, ipr: Any, op: Operation) -> None:
        if isinstance(op, (AddPolicyRule, RemovePolicyRule)):
            self._apply_rule(ipr, op)
            return
        if isinstance(op, RemoveTableRoute):
            net = ipaddress.ip_network(op.route.route)
            try:
                ipr.route("del", dst=str(net.network_address), dst_len=net.prefixlen,
                          table=op.route.table, family=10 if net.version == 6 else 2)
            except Exception as exc:
                if _ignore(exc, errno.ESRCH, errno.ENOENT):
                    return
                raise
            return
        if isinstance(op, AddTableRoute):
            net = ipaddress.ip_network(op.route.route)
            index = self._index(ipr, op.route.interface)
            ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen,
                      table=op.route.table, oif=index, family=10 if net.version == 6 else 2)
            return
        index = self._index(ipr, op.interface)
        if isinstance(op, SetMtu):
            ipr.link("set", index=index, mtu=op.mtu)
        elif isinstance(op, SetLinkUp):
            ipr.link("set", index=index, state="up")
        elif isinstance(op, (AddAddress, RemoveAddress)):
            iface = ipaddress.ip_interface(op.address)
            try:
                ipr.addr(
                    "add" if isinstance(op, AddAddress) else "del",
                    index=index,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                )
            except Exception as exc:
                if isinstance(op, AddAddress) and _ignore(exc, errno.EEXIST):
                    return
                if isinstance(op, RemoveAddress) and _ignore(exc, errno.EADDRNOTAVAIL):
                    return
                raise
        elif isinstance(op, (AddRoute, RemoveRoute)):
            net = ipaddress.ip_network(op.route)
            try:
                ipr.route(
                    "replace" if isinstance(op, AddRoute) else "del",
                    dst=str(net.network_address),
                    dst_len=net.prefixlen,
                    oif=index,
                    family=10 if net.version == 6 else 2,
                )
            except Exception as exc:
                if isinstance(op, RemoveRoute) and _ignore(exc, errno.ESRCH):
                    return
                raise

    def create_wireguard(self, name: str) -> None:
        """``ip link add NAME type wireguard`` (kernel backend)."""
        ipr = self._iproute()
        try:
            ipr.link("add", ifname=name, kind="wireguard")
        except Exception as exc:
            if _ignore(exc, errno.EEXIST):
                return
            if _ignore(exc, errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                raise BackendUnavailable(
                    f"cannot create WireGuard link {name}: this kernel has no WireGuard "
                    "module; use --backend userspace (wireguard-go)"
                ) from exc
            raise _translate(exc, f"create interface {name}", name) from exc

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def _translate(exc: Exception, what: str, name: str) -> BackendError | BackendUnavailable:
    code = getattr(exc, "code", None)
    if code == errno.EPERM:
        return BackendError(f"{what} on {name}: permission denied (needs CAP_NET_ADMIN)")
    if code in (errno.ENODEV, errno.ENETDOWN, errno.EBUSY, errno.EAGAIN):
        return BackendUnavailable(f"{what} on {name}: {errno.errorcode.get(code, code)}")
    detail = errno.errorcode.get(code, str(code)) if isinstance(code, int) else type(exc).__name__
    return BackendError(f"{what} on {name}: refused ({detail})")
