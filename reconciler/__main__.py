"""``python -m reconciler`` is ``meshops``."""

from reconciler.cli import run

run()
