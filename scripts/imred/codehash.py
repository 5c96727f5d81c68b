"""A hash of the library code a rule runs, so that editing it re-runs that rule.

Snakemake re-runs a job when its script changes, but the script is thin: the work is
in this library. :func:`code_hash` hashes a module's source together with every
module of the ``imred`` package it imports (transitively, found by reading the
import statements), and rules pass it as a ``params`` value: an edit to
``imred/calib.py`` re-runs the rules whose code uses it, and no others.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    rel = name.split(".")[1:] if name.startswith("imred") else name.split(".")
    base = PACKAGE_DIR.joinpath(*rel) if rel else PACKAGE_DIR
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    """imred modules imported by a source file (absolute or relative imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == "imred":
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "imred")
    return found


@cache
def code_hash(module: str) -> str:
    """A short hash of ``module`` and the imred code it uses.

    ``module`` is a module name (``"imred.masters"``) or the path of a rule script
    (``"scripts/calibrate.py"``), whose ``imred`` imports are followed.
    """
    seen: dict[str, Path] = {}
    todo = [module]
    if module.endswith(".py") and Path(module).is_file():
        seen[module] = Path(module)
        todo = sorted(_imports(Path(module), "imred"))
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo.extend(_imports(path, package) - set(seen))
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode())
        digest.update(seen[name].read_bytes())
    return digest.hexdigest()[:16]
