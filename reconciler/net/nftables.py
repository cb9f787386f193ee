"""The only code that runs ``nft``: render, apply and read back the ``inet meshops`` table.

Called by the agent's commit step (``Nftables.apply`` for a
``ReplaceFirewall`` operation) and gather step (``Nftables.observe``), by the
benchmarks and the tests. ``render`` and ``parse`` are pure and are the two
halves of the normal form (``reconciler.model.firewall``): for every ruleset
the builder makes, ``parse(nft -j list table inet meshops)`` after applying
``render(ruleset)`` equals ``ruleset`` (checked against the real nft in
tests/net/test_nftables_netns.py), so a second pass plans nothing.

* ``render(ruleset)`` is an ``nft -f`` script that replaces the table in one
  transaction: ``table inet meshops {}`` (creates it when missing), ``delete
  table inet meshops``, then the new definitions. ``delete`` rather than the
  ``flush table`` of PLATFORM-NOTES.md: ``flush`` keeps old chains and sets,
  so a chain the new ruleset no longer has (a relay that stops relaying)
  would linger and the read-back would never equal the desired state. The
  empty ruleset renders as create + delete: the table goes away. No other
  table is named, so no other table is touched.
* ``parse(text)`` reads ``nft -j list table inet meshops``. Expressions it
  does not know (someone added a ``counter`` by hand) become ``?``-fields, so
  the table compares unequal and is replaced on the next pass.
* ``Nftables(netns=None).observe()`` runs ``nft -j list table inet meshops``
  (``nsenter --net=/run/netns/NS nft ...`` inside a namespace); an absent table is
  ``EMPTY``. ``apply(ruleset)`` runs ``nft -f -`` with the script on stdin.

Errors are translated here: ``BackendError`` naming nft's own message when a
script is refused (nothing changed: nft applies a file as one transaction);
``BackendError`` naming the missing piece when there is no ``nft`` binary
("apt-get install nftables") or no nf_tables in the kernel, or no privilege;
``BackendUnavailable`` when the namespace does not exist (yet).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

from reconciler.boundedjson import loads
from reconciler.errors import BackendError, BackendUnavailable, InputRefused
from reconciler.model.firewall import EMPTY, TABLE, Chain, Match, NamedSet, Rule, Ruleset

Runner = Callable[[list[str], str | None], "subprocess.CompletedProcess[str]"]
MAX_LISTING = 64 * 1024 * 1024  # a 10,000-device table lists in ~1 MB
_ADDR_TYPES = ("ipv4_addr", "ipv6_addr")
_SORTED_FIELDS = ("ct state", "meta l4proto", "icmpv6 type")
_PORT_FIELDS = ("tcp dport", "udp dport", "th dport")
INSTALL_HINT = "nft not found: install nftables (apt-get install nftables)"


def _run(cmd: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)


# --- render ---------------------------------------------------------------------


def _quote(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9 _.,:/@+=-]*", text):
        raise ValueError(f"refusing to put {text!r} into an nft script")
    return f'"{text}"'


def _value(field: str, items: tuple[str, ...]) -> str:
    if field in ("iifname", "oifname"):
        return _quote(items[0])
    if field == "ct state":
        return ",".join(items)
    if len(items) == 1:
        return items[0]
    return "{ " + ", ".join(items) + " }"


def render_match(m: Match) -> str:
    return f"{m.field} {'!= ' if m.negate else ''}{_value(m.field, m.value)}"


def render_rule(rule: Rule) -> str:
    parts = [render_match(m) for m in rule.matches]
    parts.append(rule.verdict)
    if rule.comment:
        parts.append(f"comment {_quote(rule.comment)}")
    return " ".join(parts)


def _render_set(s: NamedSet) -> list[str]:
    lines = [f"\tset {s.name} {{", f"\t\ttype {s.type}"]
    if s.interval:
        lines.append("\t\tflags interval")
    if s.elements:
        chunks = [", ".join(s.elements[i:i + 8]) for i in range(0, len(s.elements), 8)]
        lines.append("\t\telements = { " + ",\n\t\t\t".join(chunks) + " }")
    lines.append("\t}")
    return lines


def render(ruleset: Ruleset) -> str:
    """The ``nft -f`` script that makes the table equal ``ruleset``, atomically."""
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}"]
    if ruleset.empty:
        return "\n".join(lines) + "\n"
    lines.append(f"table inet {TABLE} {{")
    for s in ruleset.sets:
        lines += _render_set(s)
    for c in ruleset.chains:
        lines.append(f"\tchain {c.name} {{")
        if c.hook:
            lines.append(f"\t\ttype {c.type} hook {c.hook} priority {c.priority}; "
                         f"policy {c.policy};")
        lines += [f"\t\t{render_rule(r)}" for r in c.rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- parse (the read-back half of the normal form) -----------------------------


def _left(expr: Any) -> str:
    if isinstance(expr, dict):
        if "meta" in expr:
            key = expr["meta"].get("key", "?")
            return key if key in ("iifname", "oifname") else f"meta {key}"
        if "ct" in expr:
            return f"ct {expr['ct'].get('key', '?')}"
        if "payload" in expr:
            p = expr["payload"]
            return f"{p.get('protocol', '?')} {p.get('field', '?')}"
    return "?" + json.dumps(expr, sort_keys=True)


def _item(x: Any) -> str:
    if isinstance(x, bool):
        return "?" + json.dumps(x)
    if isinstance(x, (str, int)):
        return str(x)
    if isinstance(x, dict) and "range" in x and len(x["range"]) == 2:
        return f"{_item(x['range'][0])}-{_item(x['range'][1])}"
    if isinstance(x, dict) and "prefix" in x:
        return f"{x['prefix'].get('addr')}/{x['prefix'].get('len')}"
    return "?" + json.dumps(x, sort_keys=True)


def _right(field: str, x: Any) -> tuple[str, ...]:
    if isinstance(x, dict) and "set" in x:
        items = [_item(i) for i in x["set"]]
    elif isinstance(x, list):
        items = [_item(i) for i in x]
    else:
        items = [_item(x)]
    if field in _PORT_FIELDS:
        items.sort(key=lambda t: int(t.partition("-")[0]) if t.partition("-")[0].isdigit()
                   else -1)
    elif field in _SORTED_FIELDS:
        items.sort()
    return tuple(items)


def _rule(entry: dict[str, Any]) -> Rule:
    matches: list[Match] = []
    verdict = ""
    for stmt in entry.get("expr", ()):
        if not isinstance(stmt, dict) or len(stmt) != 1:
            matches.append(Match("?", (json.dumps(stmt, sort_keys=True),)))
            continue
        (kind, body), = stmt.items()
        if kind == "match" and isinstance(body, dict) and body.get("op") in ("==", "!=", "in"):
            field = _left(body.get("left"))
            matches.append(Match(field, _right(field, body.get("right")),
                                 negate=body["op"] == "!="))
        elif kind in ("accept", "drop", "return", "masquerade") and not body and not verdict:
            verdict = kind
        elif kind in ("jump", "goto") and isinstance(body, dict) and not verdict:
            verdict = f"{kind} {body.get('target')}"
        else:  # counters, logs, limits, a second verdict: not ours
            matches.append(Match("?" + kind, (json.dumps(body, sort_keys=True),)))
    return Rule(tuple(matches), verdict or "?none", str(entry.get("comment", "")))


def _element(e: Any) -> str:
    """An interval-set element as nft prints it: ``"10.0.0.5"`` or a prefix
    object; anything else (a range, an element with options) is not ours."""
    if isinstance(e, str):
        return e
    if isinstance(e, dict) and "prefix" in e and isinstance(e["prefix"], dict):
        return f"{e['prefix'].get('addr')}/{e['prefix'].get('len')}"
    return "?" + json.dumps(e, sort_keys=True)


def _set(entry: dict[str, Any]) -> NamedSet:
    kind = entry.get("type")
    flags = entry.get("flags", [])
    items = tuple(sorted({_element(e) for e in entry.get("elem", [])}))
    if kind not in _ADDR_TYPES or flags not in ([], ["interval"]):
        return NamedSet(str(entry.get("name")), f"?{json.dumps([kind, flags])}", items)
    return NamedSet(str(entry["name"]), str(kind), items, interval=flags == ["interval"])


def parse(text: str) -> Ruleset:
    """``nft -j list table inet meshops`` output -> the normal form."""
    try:
        doc = loads(text, what="nft -j list table inet meshops", max_bytes=MAX_LISTING)
    except InputRefused as exc:
        raise BackendError(f"cannot read the nftables table back: {exc}") from exc
    items = doc.get("nftables", []) if isinstance(doc, dict) else []
    sets: list[NamedSet] = []
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[Rule]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if "set" in item:
            sets.append(_set(item["set"]))
        elif "map" in item:
            sets.append(NamedSet(str(item["map"].get("name")), "?map"))
        elif "chain" in item:
            chains[str(item["chain"].get("name"))] = item["chain"]
        elif "rule" in item:
            rules.setdefault(str(item["rule"].get("chain")), []).append(_rule(item["rule"]))
    out = []
    for name, c in chains.items():
        out.append(Chain(name, tuple(rules.get(name, ())), hook=c.get("hook"),
                         type=str(c.get("type", "filter")), priority=int(c.get("prio", 0)),
                         policy=str(c.get("policy", "accept"))))
    return Ruleset.of(sets, out)


# --- running nft ------------------------------------------------------------------


def _explain(stderr: str, what: str, netns: str | None) -> BackendError | BackendUnavailable:
    text = stderr.strip()
    where = f" in netns {netns}" if netns else ""
    if "Cannot open network namespace" in text or ("/run/netns/" in text
                                                   and "No such file" in text):
        return BackendUnavailable(f"{what}{where}: the network namespace does not exist: {text}")
    if "Operation not permitted" in text:
        return BackendError(f"{what}{where}: permission denied (needs root or CAP_NET_ADMIN)")
    if "Protocol not supported" in text or "Operation not supported" in text:
        return BackendError(f"{what}{where}: this kernel has no nf_tables support "
                            f"(load the nf_tables module; CONFIG_NF_TABLES): {_first(text)}")
    return BackendError(f"{what}{where} was refused by nft, nothing changed: {_first(text, 6)}")


def _first(text: str, lines: int = 2) -> str:
    return " | ".join(line.strip() for line in text.splitlines()[:lines] if line.strip())


class Nftables:
    """The ``inet meshops`` table of one network namespace (``None`` = current)."""

    def __init__(self, netns: str | None = None, *, run: Runner = _run,
                 nft: str | None = None) -> None:
        self.netns = netns
        self._run = run
        self._nft = nft

    def _binary(self) -> str:
        if self._nft is None:
            found = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
            if found is None:
                raise BackendError(INSTALL_HINT)
            self._nft = found
        return self._nft

    def _cmd(self, *args: str) -> list[str]:
        # nsenter enters only the network namespace; `ip netns exec` also makes a
        # mount namespace and remounts /sys, which nft does not need (~3 ms a call)
        prefix = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        return [*prefix, self._binary(), *args]

    def _call(self, args: Iterable[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return self._run(self._cmd(*args), stdin)
        except FileNotFoundError as exc:
            if exc.filename == "nsenter":
                raise BackendError("nsenter not found: install util-linux") from exc
            raise BackendError(INSTALL_HINT) from exc
        except subprocess.TimeoutExpired as exc:
            raise BackendUnavailable(f"nft did not answer within {exc.timeout} s") from exc

    def observe(self) -> Ruleset:
        """The live table in the normal form; ``EMPTY`` when there is none."""
        res = self._call(["-j", "list", "table", "inet", TABLE], None)
        if res.returncode != 0:
            if ("No such file or directory" in res.stderr
                    and "/run/netns/" not in res.stderr):
                return EMPTY
            raise _explain(res.stderr, f"reading table inet {TABLE}", self.netns)
        return parse(res.stdout)

    def apply(self, ruleset: Ruleset) -> None:
        """Replace the table with ``ruleset`` in one nft transaction (all or nothing)."""
        res = self._call(["-f", "-"], render(ruleset))
        if res.returncode != 0:
            raise _explain(res.stderr, f"replacing table inet {TABLE}", self.netns)
