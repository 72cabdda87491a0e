"""docs/json.md read as the JSON reports' schema, and a check of a report against it.

The document is the one source of truth: its tables (one per schema id, one
per shared block) are parsed here, and :func:`check` lists every way a real
report differs from them, each problem saying which field to document where.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"
BASE_TYPES = {"string", "integer", "number", "boolean", "object", "map", "list", "any"}


@dataclasses.dataclass(frozen=True)
class Field:
    """One documented row, with its path made absolute and its block expanded."""

    path: str
    types: frozenset[str]
    nullable: bool
    optional: bool
    stability: str
    section: str  # the table it is written in: a schema id or "block NAME"
    line: int
    prefix: str = ""  # where that table's paths start (a block's place in the report)


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> tuple[dict[str, list[Field]], dict[str, list[Field]]]:
    """(rows per schema id, rows per block name), paths as written."""
    schemas: dict[str, list[Field]] = {}
    blocks: dict[str, list[Field]] = {}
    current: list[Field] | None = None
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        if m := re.match(r"^## `([^`]+)`", line):
            section, current = m.group(1), schemas.setdefault(m.group(1), [])
        elif m := re.match(r"^### block `([^`]+)`", line):
            section, current = f"block {m.group(1)}", blocks.setdefault(m.group(1), [])
        elif line.startswith("#"):
            current = None
        elif current is not None and line.startswith("| `"):
            cells = _split_row(line)
            if len(cells) != 5:
                raise ValueError(f"docs/json.md:{number}: a row has 5 cells (path, type, unit, stability, meaning)")
            path, kind, _unit, stability, _meaning = cells
            kind = kind.strip()
            optional = kind.startswith("optional ")
            alternatives = {a.strip() for a in kind.removeprefix("optional ").split(" or ")}
            if stability not in ("stable", "informational"):
                raise ValueError(f"docs/json.md:{number}: stability is 'stable' or 'informational', not {stability!r}")
            current.append(Field(path.strip("`"), frozenset(alternatives - {"null"}), bool({"null", "any"} & alternatives),
                                 optional, stability, section, number))
    for rows in (*schemas.values(), *blocks.values()):
        for row in rows:
            unknown = row.types - BASE_TYPES - blocks.keys()
            if unknown or len(row.types & blocks.keys()) > 1:
                raise ValueError(f"docs/json.md:{row.line}: unknown type {sorted(unknown)} for `{row.path}`")
    return schemas, blocks


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def expand(rows: list[Field], blocks: dict[str, list[Field]], prefix: str = "") -> dict[str, Field]:
    """Absolute paths to fields, blocks spliced in where a row's type names one."""
    out: dict[str, Field] = {}
    for row in rows:
        block = next(iter(row.types & blocks.keys()), None)
        if row.path == "...":
            out.update(expand(blocks[block], blocks, prefix))
            continue
        full = _join(prefix, row.path)
        if block is None:
            out[full] = dataclasses.replace(row, path=full, prefix=prefix)
        else:
            out[full] = dataclasses.replace(row, path=full, prefix=prefix, types=(row.types - {block}) | {"object"})
            out.update(expand(blocks[block], blocks, full))
    return out


def load(text: str | None = None) -> dict[str, dict[str, Field]]:
    """Every schema id's fields, by absolute path."""
    schemas, blocks = parse(text if text is not None else DOC.read_text())
    return {sid: expand(rows, blocks) for sid, rows in schemas.items()}


def _is(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("object", "map"):
        return isinstance(value, dict)
    return kind == "list" and isinstance(value, list)


def _children(fields: dict[str, Field], path: str) -> dict[str, Field]:
    """The documented fields of the object at ``path``, by key."""
    head = f"{path}." if path else ""
    return {p[len(head):]: f for p, f in fields.items()
            if p.startswith(head) and re.fullmatch(r"[^.\[\]*]+", p[len(head):]) and p[len(head):] != "..."}


def _where(fields: dict[str, Field], path: str, schema: str) -> tuple[str, str]:
    """(the table a new field at ``path`` belongs in, its path as written
    there): that of its documented siblings, else the schema's."""
    parent = path
    while parent:
        shorter = re.sub(r"(\.[^.]*|\[\])$", "", parent)
        parent = "" if shorter == parent else shorter
        siblings = [f for p, f in fields.items() if p.startswith(f"{parent}.") or p.startswith(f"{parent}[]")]
        if siblings:
            table = siblings[0]
            return table.section, path[len(table.prefix) + 1:] if table.prefix else path
    return schema, path


def check(report: Any, fields: dict[str, Field], schema: str, seen_in: str = "") -> list[str]:
    """Every difference between ``report`` and the documented fields, each
    saying what to change where."""
    problems: list[str] = []
    origin = f" (in the JSON of {seen_in})" if seen_in else ""

    def undocumented(path: str) -> None:
        table, written = _where(fields, path, schema)
        problems.append(f"{schema}: field `{path}` is not documented{origin}: add a row "
                        f"| `{written}` | type | unit | stable or informational | meaning | for it to the "
                        f"`{table}` table in docs/json.md")

    def visit(value: Any, path: str, field: Field | None) -> None:
        """``field`` is None only for the report itself (an object)."""
        if field is not None:
            if value is None:
                if not field.nullable:
                    problems.append(f"{schema}: `{path}` is null{origin}, but docs/json.md:{field.line} does not allow "
                                    "null (write `... or null` there if it may be)")
                return
            if not any(_is(value, t) for t in field.types):
                problems.append(f"{schema}: `{path}` is {type(value).__name__} {str(value)[:40]!r}{origin}, but "
                                f"docs/json.md:{field.line} says {' or '.join(sorted(field.types))}")
                return
        kinds = field.types if field is not None else {"object"}
        if isinstance(value, dict) and "object" in kinds:
            documented = _children(fields, path)
            for key, item in value.items():
                if key in documented:
                    visit(item, _join(path, key), documented[key])
                else:
                    undocumented(_join(path, key))
            for key, child in documented.items():
                if key not in value and not child.optional:
                    problems.append(f"{schema}: `{_join(path, key)}` is missing{origin}, but docs/json.md:{child.line} "
                                    "lists it as always there (write `optional` before its type if it may be absent)")
            return
        inner = f"{path}.*" if isinstance(value, dict) else f"{path}[]" if isinstance(value, list) else None
        if inner is None:
            return
        items = value.values() if isinstance(value, dict) else value
        if items and inner not in fields:
            undocumented(inner)
            return
        for item in items:
            visit(item, inner, fields[inner])

    if not isinstance(report, dict):
        return [f"{schema}: the report is {type(report).__name__}, not an object"]
    visit(report, "", None)
    return problems
