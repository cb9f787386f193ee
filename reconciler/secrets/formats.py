"""Plaintext/ciphertext document formats for SOPS files: YAML and JSON.

``reconciler.secrets.sops`` and the ``meshops secrets`` CLI call
:func:`format_for`, :func:`loads` and :func:`dumps`. YAML goes through
:mod:`reconciler.secrets.goyaml` (go-yaml typing, comments kept); JSON keeps
key order and writes tab-indented output like sops. Comments have no JSON form
and are dropped there.
"""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.errors import SecretsError
from reconciler.secrets import goyaml
from reconciler.secrets.values import Comment

FORMATS = ("yaml", "json")
_EXTENSIONS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def format_for(path: str | Path, input_type: str | None = None) -> str:
    """``input_type`` if given, else the format named by the file extension."""
    if input_type:
        if input_type not in FORMATS:
            raise SecretsError(f"unsupported format {input_type!r}; use one of {', '.join(FORMATS)}")
        return input_type
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise SecretsError(
            f"cannot tell the format of {path} from its extension; pass --input-type yaml|json"
        )
    return _EXTENSIONS[suffix]


def loads(text: str, fmt: str, *, keep_comments: bool = True) -> dict[str, object]:
    """Parse a document whose root is a mapping."""
    if fmt == "yaml":
        return goyaml.load(text, keep_comments=keep_comments)
    if fmt == "json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise SecretsError(f"not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise SecretsError("a sops JSON file must hold an object at the top level")
        return doc
    raise SecretsError(f"unsupported format {fmt!r}; use one of {', '.join(FORMATS)}")


def _strip_comments(value: object) -> object:
    if isinstance(value, dict):
        return {k: _strip_comments(v) for k, v in value.items() if not isinstance(k, Comment)}
    if isinstance(value, list):
        return [_strip_comments(v) for v in value if not isinstance(v, Comment)]
    return value


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(doc: dict[str, object], fmt: str) -> str:
    """Write a document (``Comment`` keys/items become ``#`` lines in YAML)."""
    if fmt == "yaml":
        return goyaml.dump(doc)
    if fmt == "json":
        try:
            text = json.dumps(
                _strip_comments(doc), indent="\t", ensure_ascii=False, allow_nan=False,
                default=_json_default,
            )
        except (TypeError, ValueError) as exc:
            raise SecretsError(f"cannot write this document as JSON: {exc}") from exc
        return text + "\n"
    raise SecretsError(f"unsupported format {fmt!r}; use one of {', '.join(FORMATS)}")


def strip_comments(doc: dict[str, object]) -> dict[str, object]:
    """A copy of ``doc`` without :class:`Comment` keys and items."""
    result = _strip_comments(doc)
    assert isinstance(result, dict)
    return result
