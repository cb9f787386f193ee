"""reconciler.policy: the pure policy engine (layer 2, stdlib + model + errors only).

* ``evaluate(org_state, src, dst, proto, port) -> Decision`` and
  ``run_tests(org_state) -> tuple[TestOutcome, ...]``: called by
  ``reconciler.config`` for ``meshops validate``;
* ``reachability(org_state) -> Matrix`` and ``diff.review_diff(base, head)``:
  ``meshops plan``;
* ``compile_policy(org_state) -> CompiledPolicy``: ``reconciler.pki.manifest``;
* ``evaluate_compiled(...)`` and ``peers_allowed(manifest, me)``: agents;
* ``firewall.desired_ruleset(manifest, me, interface)`` (the nftables table a
  device should have) and ``exitroute.exit_node_of`` / ``exit_routing`` (the
  exit-node client's policy routing): agents, every pass.

docs/policy.md describes the semantics.
"""

from __future__ import annotations

from .access import ALL_ACCESS, NO_ACCESS, Access
from .compiled import (
    CompiledPolicy,
    PeerIndex,
    compile_policy,
    evaluate_compiled,
    peers_allowed,
)
from .engine import Decision, TestOutcome, evaluate, evaluate_repo, run_tests
from .reach import Matrix, reachability

__all__ = [
    "ALL_ACCESS",
    "NO_ACCESS",
    "Access",
    "CompiledPolicy",
    "Decision",
    "Matrix",
    "PeerIndex",
    "TestOutcome",
    "compile_policy",
    "evaluate",
    "evaluate_compiled",
    "evaluate_repo",
    "peers_allowed",
    "reachability",
    "run_tests",
]
