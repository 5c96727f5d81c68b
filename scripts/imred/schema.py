"""Validate YAML documents against imred's JSON schemas, with messages a person can act on.

The schemas live in ``config/schemas/``. :func:`validate` raises
:class:`~imred.errors.ImredError` naming the file, the key (as a dotted path) and the
allowed keys or values; :func:`fill_defaults` adds the schema's defaults.
"""

from __future__ import annotations

import copy
import difflib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ImredError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schemas"


@cache
def load_schema(name: str) -> dict:
    """Return the schema ``config/schemas/{name}.schema.yaml``."""
    path = SCHEMA_DIR / f"{name}.schema.yaml"
    with open(path) as fh:
        return yaml.safe_load(fh)


def read_yaml(path: str | Path, what: str) -> Any:
    """Read a YAML file, turning a missing or malformed file into an ImredError."""
    path = Path(path)
    if not path.is_file():
        raise ImredError(f"{what} '{path}' does not exist")
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ImredError(f"{what} '{path}' is not valid YAML{where}: {err}") from None


def _where(path) -> str:
    parts = []
    for p in path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def _resolve(schema: dict, root: dict) -> dict:
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        node = root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _message(err: jsonschema.ValidationError) -> str:
    where = _where(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
        msgs = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            msgs.append(f"unknown key '{key}'{hint}")
        at = f"in '{where}'" if err.absolute_path else "at the top level"
        return f"{'; '.join(msgs)} {at}; allowed keys: {', '.join(allowed)}"
    if err.validator == "enum":
        allowed = ", ".join(str(v) for v in err.validator_value)
        return f"'{where}' is {err.instance!r}; allowed values: {allowed}"
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"'{where}' lacks the required key '{missing}'"
    if err.validator == "type":
        return f"'{where}' is {err.instance!r}; it must be of type {err.validator_value}"
    if err.validator == "pattern":
        return f"'{where}' is {err.instance!r}, which does not match {err.validator_value!r}"
    return f"'{where}': {err.message}"


def validate(doc: Any, schema_name: str, source: str) -> None:
    """Validate ``doc`` against a named schema; raise ImredError listing every problem.

    ``source`` names the file (or setting) the document came from, for the message.
    """
    schema = load_schema(schema_name)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        # an error inside oneOf/anyOf is reported once, by its most specific cause
        lines = []
        for err in errors:
            best = jsonschema.exceptions.best_match([err])
            lines.append(_message(best))
        lines = list(dict.fromkeys(lines))
        raise ImredError(f"{source}: " + "; ".join(lines))


def fill_defaults(doc: Any, schema_name: str) -> Any:
    """Return a copy of ``doc`` with the schema's ``default`` values filled in."""
    root = load_schema(schema_name)
    return _fill(copy.deepcopy(doc), root, root)


def _fill(doc: Any, schema: dict, root: dict) -> Any:
    schema = _resolve(schema, root)
    if isinstance(doc, dict) and isinstance(schema, dict):
        for key, sub in schema.get("properties", {}).items():
            sub = _resolve(sub, root)
            if key not in doc and isinstance(sub, dict) and "default" in sub:
                doc[key] = copy.deepcopy(sub["default"])
            if key in doc:
                doc[key] = _fill(doc[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in doc:
                if key not in schema.get("properties", {}):
                    doc[key] = _fill(doc[key], extra, root)
    elif (
        isinstance(doc, list) and isinstance(schema, dict) and isinstance(schema.get("items"), dict)
    ):
        return [_fill(item, schema["items"], root) for item in doc]
    return doc
