"""reconciler.config: org repository (working tree or git rev) -> validated model.

Public API (see docs/architecture.md and docs/repo-format.md)::

    load(path, rev=None, *, cache=None) -> LoadResult(repo, problems, commit)
    BlobCache()   # pass to successive load() calls: unchanged blobs are not re-parsed

Modules: ``source`` (the only gitpython user), ``yamlload`` (the only pyyaml
user), ``schema`` (the only jsonschema user), ``build`` (documents -> model),
``semantic`` (cross-file checks), ``loader`` (the pipeline), ``synth``
(synthetic repositories for benchmarks and tests). ``allocate`` and
``writer`` serve ``meshops device add``.
"""

from __future__ import annotations

from reconciler.config.loader import BlobCache, LoadResult, load

__all__ = ["BlobCache", "LoadResult", "load"]
