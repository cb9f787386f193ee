"""The host firewall as data: one nftables table in a normal form.

``reconciler.policy.firewall.desired_ruleset`` builds the desired ``Ruleset``
of a device from its verified manifest; ``reconciler.net.nftables`` renders it
as an ``nft -f`` script and reads the live table back
(``nft -j list table inet meshops``) into the same form;
``reconciler.converge.firewall.plan_firewall`` compares the two with ``==``.

The normal form is what makes "a second pass is a no-op" hold, so every value
is canonical:

* named sets hold their elements exactly as nft prints
  them back: a host bare (``10.0.0.5``, ``fd00::5``), a network as
  ``addr/len``; no duplicates, no overlaps (networks collapsed, hosts inside
  them dropped), sorted as strings. nft neither merges nor splits elements, so
  the read-back is the same tuple, and no address is parsed on the no-op path;
* a match's value is a tuple of canonical items (``"22"``, ``"8000-8100"``,
  ``"@src_r0_4"``, ``"established"``), sorted where nft treats it as a set;
  a single item is a scalar on the wire;
* chains are sorted by name (declaration order has no meaning; hooks have
  priorities), rules keep their order (first match wins);
* the empty ruleset (no sets, no chains) stands for "no table": rendering it
  deletes the table, and an absent table reads back as it.

Stdlib only, no I/O.
"""

from __future__ import annotations

from reconciler.structs import Record

TABLE = "meshops"  # family inet; meshops never touches another table

# Match fields the builder emits and the reader understands. Anything else read
# back from the kernel becomes a field starting with "?" so it never compares equal.
FIELDS = (
    "iifname", "oifname", "ct state", "meta l4proto",
    "ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr",
    "tcp dport", "udp dport", "th dport", "icmpv6 type",
)  # fmt: skip
VERDICTS = ("accept", "drop", "return", "masquerade")  # plus "jump CHAIN"


class NamedSet(Record):
    """``set NAME { type TYPE; [flags interval;] elements = {...} }``: an interval
    set when it holds a network, else a plain hash set (half the cost to load
    and list, measured with 20,000 addresses)."""

    name: str
    type: str  # "ipv4_addr" | "ipv6_addr"
    elements: tuple[str, ...] = ()  # canonical hosts and networks, sorted as strings
    interval: bool = False


class Match(Record):
    """``FIELD [!=] VALUE``; ``value`` items are canonical strings, ``@NAME``
    refers to a named set."""

    field: str
    value: tuple[str, ...]
    negate: bool = False


class Rule(Record):
    matches: tuple[Match, ...]
    verdict: str  # "accept" | "drop" | "return" | "masquerade" | "jump CHAIN"
    comment: str = ""  # for humans (golden files); not compared

    def __eq__(self, other: object) -> bool:
        if type(other) is not Rule:
            return NotImplemented
        return self.matches == other.matches and self.verdict == other.verdict

    def __hash__(self) -> int:
        return hash((self.matches, self.verdict))


class Chain(Record):
    """A chain; ``hook`` set makes it a base chain (``type``, ``priority``, ``policy``)."""

    name: str
    rules: tuple[Rule, ...] = ()
    hook: str | None = None  # "input" | "forward" | "postrouting"
    type: str = "filter"  # "filter" | "nat"
    priority: int = 0  # filter = 0, srcnat = 100
    policy: str = "accept"


class Ruleset(Record):
    """The whole ``inet meshops`` table. Build with ``Ruleset.of`` to sort."""

    sets: tuple[NamedSet, ...] = ()
    chains: tuple[Chain, ...] = ()

    @staticmethod
    def of(sets: tuple[NamedSet, ...] | list[NamedSet],
           chains: tuple[Chain, ...] | list[Chain]) -> Ruleset:
        return Ruleset(tuple(sorted(sets, key=lambda s: s.name)),
                       tuple(sorted(chains, key=lambda c: c.name)))

    @property
    def empty(self) -> bool:
        return not self.sets and not self.chains

    @property
    def statements(self) -> int:
        """Rules over all chains: the size that must not grow with the device count."""
        return sum(len(c.rules) for c in self.chains)

    @property
    def elements(self) -> int:
        """Set elements over all sets (this grows with devices, by design)."""
        return sum(len(s.elements) for s in self.sets)

    def set(self, name: str) -> NamedSet | None:
        return next((s for s in self.sets if s.name == name), None)

    def chain(self, name: str) -> Chain | None:
        return next((c for c in self.chains if c.name == name), None)


EMPTY = Ruleset()
