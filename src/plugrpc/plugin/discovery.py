"""`rpc.discover` for a plugin: an OpenRPC 1.2 document built once, at start, from its handlers.

Each command's params come from its signature, their types from its annotations, its
description from the first paragraph of its docstring.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any, Final

from .dispatch import Handler

OPENRPC_VERSION: Final = "1.2.6"
_SCHEMA_TYPES: Final[Mapping[Any, str]] = {
    int: "integer",
    str: "string",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def discover_document(table: Mapping[str, Handler], title: str) -> dict[str, Any]:
    """An OpenRPC 1.2 document for `rpc.discover`: every command (not the `rpc.` built-ins), its params
    and description."""
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": title, "version": "0.0.0"},
        "methods": [_method_doc(handler) for name, handler in table.items() if not name.startswith("rpc.")],
    }


def _method_doc(handler: Handler) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(handler.fn)
    except Exception:  # unresolvable forward references, callables get_type_hints refuses
        hints = {}
    doc: dict[str, Any] = {"name": handler.name, "params": []}
    description = _first_paragraph(inspect.getdoc(handler.fn))
    if description:
        doc["description"] = description
    sig = handler.signature
    if sig is not None:
        kinds = {p.kind for p in sig.parameters.values()}
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            doc["params"].append(
                {"name": p.name, "required": p.default is p.empty, "schema": _schema(hints.get(p.name))}
            )
        if inspect.Parameter.POSITIONAL_ONLY in kinds:
            doc["paramStructure"] = "by-position"
        elif inspect.Parameter.KEYWORD_ONLY in kinds:
            doc["paramStructure"] = "by-name"
    doc["result"] = {"name": "result", "schema": _schema(hints.get("return"))}
    return doc


def _schema(hint: Any) -> dict[str, Any]:
    """JSON-schema-ish: int -> integer, list[int] -> array, ...; anything else -> {}."""
    origin = typing.get_origin(hint) or hint
    try:
        name = _SCHEMA_TYPES.get(origin)
    except TypeError:  # unhashable annotation
        return {}
    return {"type": name} if name else {}


def _first_paragraph(doc: str | None) -> str:
    return " ".join(doc.split("\n\n", 1)[0].split()) if doc else ""
