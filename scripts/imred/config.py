"""Run configuration: validation, defaults and settings hashes.

``config/config.yaml`` is checked against ``config/schemas/config.schema.yaml``; an
unknown key, a wrong type or a value outside the allowed set is an
:class:`~imred.errors.ImredError` naming the key and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .schema import fill_defaults, validate


def load_config(doc: Any, source: str = "config") -> dict:
    """Validate a configuration mapping and return it with defaults filled in."""
    if doc is None or doc == {}:
        doc = {}
    validate(doc, "config", source)
    return fill_defaults(doc, "config")


def settings_hash(settings: Any) -> str:
    """A short, stable hash of settings (any JSON-able value), recorded in product headers."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
