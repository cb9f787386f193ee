"""Render a ``ReviewReport`` as markdown (a PR comment), plain text or JSON.

Called by ``meshops plan`` through ``policy.review``. All three are
deterministic: inputs are sorted by ``review_diff`` and JSON keys are sorted.
Markdown stays below GitHub's comment limit by capping each table at
``MAX_ROWS`` rows (the JSON form is never truncated). Pure and stdlib-only.
"""

from __future__ import annotations

import json
from typing import Any

from .report import DeviceEntry, FieldChange, OrgPlan, ReachChange, ReviewReport

MAX_ROWS = 200
MAX_NAMES = 8
TITLE = "meshops plan"


def _short(commit: str | None, missing: str = "working tree") -> str:
    return commit[:12] if commit else missing


def fmt_value(v: object) -> str:
    if v is None or v == "":
        return "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) if v else "(none)"
    return str(v)


def fmt_names(names: tuple[str, ...], code: bool = False) -> str:
    shown = [f"`{n}`" if code else n for n in names[:MAX_NAMES]]
    more = len(names) - MAX_NAMES
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _field_text(c: FieldChange, arrow: str = "→") -> str:
    return f"{c.field}: {fmt_value(c.before)} {arrow} {fmt_value(c.after)}"


def _entry_text(e: DeviceEntry) -> str:
    return f"{e.why}; owner {e.owner}; {fmt_value(e.tunnel_ips)}"


def _reach_cells(r: ReachChange) -> tuple[str, str]:
    return (str(r.gained) if r.gained else "", str(r.lost) if r.lost else "")


# -- markdown ---------------------------------------------------------------

def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows[:MAX_ROWS]:
        out.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    if len(rows) > MAX_ROWS:
        out.append(f"\n_…and {len(rows) - MAX_ROWS} more rows; run `meshops plan --format json`._")
    return out


def _md_org(o: OrgPlan) -> list[str]:
    status = {"added": " (new organization)", "removed": " (organization removed)"}
    lines = [f"### Organization `{o.org}`{status.get(o.status, '')}", ""]
    if o.org_fields:
        lines += ["Organization settings: " + "; ".join(_field_text(c) for c in o.org_fields), ""]
    if o.policy_changed:
        lines += ["Policy changed.", ""]
    rows = (
        [["added", f"`{e.name}`", _entry_text(e)] for e in o.added]
        + [["removed", f"`{e.name}`", _entry_text(e)] for e in o.removed]
        + [["changed", f"`{c.name}`", "; ".join(_field_text(f) for f in c.fields)]
           for c in o.changed]
    )
    if rows:
        lines += ["#### Devices", ""] + _md_table(["change", "device", "details"], rows) + [""]
    if o.reach:
        rrows = [[fmt_names(r.srcs, True), fmt_names(r.dsts, True), *_reach_cells(r)]
                 for r in o.reach]
        lines += ["#### Reachability", ""]
        lines += _md_table(["from", "to", "newly reachable", "no longer reachable"], rrows)
        lines += [""]
    return lines


def render_markdown(report: ReviewReport) -> str:
    head = [f"## {TITLE}", "",
            f"`{_short(report.base_commit, 'nothing')}` → `{_short(report.head_commit)}`", ""]
    if report.empty:
        return "\n".join(head + ["**No changes.**", ""])
    lines = head + [f"**Summary:** {report.summary()}.", ""]
    for o in report.orgs:
        lines += _md_org(o)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- text -------------------------------------------------------------------

def render_text(report: ReviewReport) -> str:
    lines = [f"{TITLE}: {_short(report.base_commit, 'nothing')} -> {_short(report.head_commit)}"]
    if report.empty:
        return "\n".join(lines + ["No changes."]) + "\n"
    lines.append(f"Summary: {report.summary()}.")
    for o in report.orgs:
        lines += ["", f"org {o.org} ({o.status})"]
        lines += [f"  org setting {_field_text(c, '->')}" for c in o.org_fields]
        if o.policy_changed:
            lines.append("  policy changed")
        lines += [f"  + device {e.name} ({_entry_text(e)})" for e in o.added]
        lines += [f"  - device {e.name} ({_entry_text(e)})" for e in o.removed]
        for c in o.changed:
            lines.append(f"  ~ device {c.name}: " + "; ".join(_field_text(f, "->") for f in c.fields))
        for r in o.reach:
            pair = f"{fmt_names(r.srcs)} -> {fmt_names(r.dsts)}"
            if r.gained:
                lines.append(f"  + reach {pair}: {r.gained}")
            if r.lost:
                lines.append(f"  - reach {pair}: {r.lost}")
    return "\n".join(lines) + "\n"


# -- json -------------------------------------------------------------------

def _json_field(c: FieldChange) -> dict[str, Any]:
    return {"field": c.field, "before": c.before, "after": c.after}


def _json_entry(e: DeviceEntry) -> dict[str, Any]:
    return {"name": e.name, "why": e.why, "owner": e.owner, "tunnel_ips": list(e.tunnel_ips)}


def _json_org(o: OrgPlan) -> dict[str, Any]:
    return {
        "org": o.org,
        "status": o.status,
        "organization": [_json_field(c) for c in o.org_fields],
        "policy_changed": o.policy_changed,
        "devices": {
            "added": [_json_entry(e) for e in o.added],
            "removed": [_json_entry(e) for e in o.removed],
            "changed": [{"name": c.name, "fields": [_json_field(f) for f in c.fields]}
                        for c in o.changed],
        },
        "reachability": [
            {"src": list(r.srcs), "dst": list(r.dsts), "pairs": r.pair_count,
             "gained": r.gained.as_dict(), "lost": r.lost.as_dict()}
            for r in o.reach
        ],
    }


def report_dict(report: ReviewReport) -> dict[str, Any]:
    s = report.summary()
    return {
        "base": report.base_commit,
        "head": report.head_commit,
        "changed": not report.empty,
        "summary": {"orgs": s.orgs, "devices_added": s.added, "devices_removed": s.removed,
                    "devices_changed": s.changed, "pairs_gaining": s.gained_pairs,
                    "pairs_losing": s.lost_pairs},
        "orgs": [_json_org(o) for o in report.orgs],
    }


def render_json(report: ReviewReport) -> str:
    return json.dumps(report_dict(report), indent=2, sort_keys=True) + "\n"
