"""reconciler.policy stays pure: importing it loads no I/O library."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("yaml", "jsonschema", "git", "pyroute2", "gnupg", "stun", "aiohttp", "socket",
             "subprocess", "psycopg", "watchdog", "reconciler.config", "reconciler.pki")


def test_import_loads_no_io_library():
    code = (
        "import sys, json\n"
        "import reconciler.policy, reconciler.policy.review\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []
