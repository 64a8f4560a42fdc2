"""The code a step runs, read from the project's own import graph.

A step's code identity is the sha256 of every project module in the import closure of
its roots: the step's module, plus the plugin modules its config selects (a student's
method module, prepare_data's source module). Both front doors use it: the Prefect keys
hash it, and the DVC stages depend on the files `tasks.check_study` writes from it.

Plugin packages (`PLUGINS`) hold one module per method family or data source. An import
of a plugin module from outside its package is not followed: such code reaches a plugin
only through the registry, for the entries a config names, and those entries' modules
are roots of the step that runs them. So editing DHKD's module changes the identity of
DHKD's students only, and the teacher, which runs no method, depends on none of them.
Side-channel modules (`SIDE_CHANNELS`: MLflow logging) are never followed: they change
no artifact's bytes.

The graph is static (every `import` / `from` statement of a module, in functions too;
importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`), so it follows the
source, not what one process happened to import.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kdlib", "tasks", "flows")
"""Top-level packages whose modules are project code (everything else is a dependency)."""
PLUGINS = ("kdlib.methods", "kdlib.data.sources")
"""Packages whose modules enter a closure only as roots or from inside the same package."""
SIDE_CHANNELS = ("tasks.tracking",)
"""Modules that write nothing into any artifact (the MLflow side channel): an import of one
is not followed, so changing how runs are logged re-runs no step."""


def module_file(module: str) -> Path | None:
    """The source file of a project module (a package's `__init__.py`), None if there is none."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = SOURCE_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _plugin_of(module: str) -> str | None:
    return next((p for p in PLUGINS if module == p or module.startswith(p + ".")), None)


def _with_parents(module: str) -> list[str]:
    """`a.b.c` and the packages importing it runs: `a`, `a.b`."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _imported(module: str, path: Path) -> set[str]:
    """Project modules that `module`'s source imports, with their parent packages."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import name`: name is a submodule when it has a file, else an attribute of pkg
            names = [base] + [f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}")]
        else:
            continue
        for name in names:
            found.update(m for m in _with_parents(name) if module_file(m))
    found.discard(module)
    return found


@functools.lru_cache(maxsize=None)
def closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """Every project module that running `roots` executes, sorted; plugin rule in the module docstring."""
    missing = [r for r in roots if module_file(r) is None]
    if missing:
        raise ValueError(f"no project module named {', '.join(missing)}")
    seen: set[str] = set()
    todo = [m for r in roots for m in _with_parents(r) if module_file(m)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        own = _plugin_of(module)
        for dep in _imported(module, module_file(module)):
            if dep in SIDE_CHANNELS:
                continue
            plugin = _plugin_of(dep)
            if plugin is not None and plugin != own and dep not in roots:
                continue
            todo.append(dep)
    return tuple(sorted(seen))


def code_files(roots: Iterable[str]) -> list[str]:
    """The source files (relative to the project) of `closure(roots)`."""
    return [module_file(m).relative_to(SOURCE_ROOT).as_posix() for m in closure(tuple(roots))]


@functools.lru_cache(maxsize=None)
def code_digest(roots: tuple[str, ...]) -> str:
    """sha256 over the path and bytes of every file of `closure(roots)`."""
    digest = hashlib.sha256()
    for name in code_files(roots):
        digest.update(name.encode() + b"\0")
        digest.update((SOURCE_ROOT / name).read_bytes())
    return digest.hexdigest()
