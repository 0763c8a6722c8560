"""Feature detection on source code: read a package's modules without importing them.

Every compat decision that depends on what detectron2 (or fvcore) *does* reads the module's source
here, so no detectron2 submodule is imported before its patch hook is registered. Only the
top-level package is located (``importlib.util.find_spec("detectron2")`` imports nothing below it).
"""
import ast
import functools
import importlib.util
import re
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple


@functools.lru_cache(maxsize=None)
def package_dir(top: str) -> Optional[Path]:
    """Directory of the top-level package `top` (first search location), or None."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def module_path(name: str) -> Optional[Path]:
    """File of module `name` (``a/b/c.py`` or ``a/b/c/__init__.py``) below its top-level package."""
    top, *rest = name.split(".")
    base = package_dir(top)
    if base is None:
        return None
    candidates = [base.joinpath(*rest).with_suffix(".py")] if rest else []
    candidates.append(base.joinpath(*rest, "__init__.py"))
    return next((p for p in candidates if p.is_file()), None)


@functools.lru_cache(maxsize=None)
def module_source(name: str) -> Optional[str]:
    """Source text of module `name`, or None if it is not a readable .py file."""
    path = module_path(name)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@functools.lru_cache(maxsize=None)
def module_tree(name: str) -> Optional[ast.Module]:
    """Parsed source of module `name`, or None."""
    source = module_source(name)
    if source is None:
        return None
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


@functools.lru_cache(maxsize=None)
def package_modules(top: str) -> Tuple[str, ...]:
    """Names of all .py modules below package `top` (sorted, deterministic)."""
    return tuple(_walk(top))


def _walk(top: str) -> Iterator[str]:
    base = package_dir(top)
    if base is None:
        return
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        if any(not p.isidentifier() for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join((top,) + parts)


def modules_matching(top: str, literal: str, pattern: str) -> List[str]:
    """Modules below `top` whose source contains `literal` and matches the regex `pattern`
    (a cheap filter before parsing)."""
    regex = re.compile(pattern)
    return [m for m in package_modules(top)
            if literal in (module_source(m) or "") and regex.search(module_source(m) or "")]


def modules_reading(top: str, base: str, names: Iterable[str]) -> Dict[str, List[str]]:
    """{module: [name, ...]} for the modules below `top` that read `<base>.<name>` for one of `names`
    (e.g. base "np", names ["int", "float"]); a regex pre-filter, then the AST decides."""
    names = list(names)
    found = {}
    pattern = r"\b%s\.(%s)\b" % (re.escape(base), "|".join(map(re.escape, names)))
    for module in modules_matching(top, base + ".", pattern):
        tree = module_tree(module)
        used = [a for a in attribute_uses(tree, base) if a in names] if tree is not None else []
        if used:
            found[module] = used
    return found


# ---------------------------------------------------------------- AST queries
def dotted(node: ast.AST) -> str:
    """'torch.jit.script' for the expression torch.jit.script, '' for other expressions."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def attribute_uses(tree: ast.AST, base: str) -> List[str]:
    """Attributes read from the name `base` (``np.int`` -> "int"), sorted, without duplicates."""
    return sorted({n.attr for n in ast.walk(tree)
                   if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                   and n.value.id == base})


def imports_at_module_level(tree: ast.Module, module: str, name: str) -> Tuple[bool, bool]:
    """(imported unguarded, imported inside a module-level try) for ``from module import name``.

    Relative imports are resolved only for the common ``from detectron2 import _C`` spelling,
    which is what detectron2 uses.
    """
    def matches(node: ast.AST) -> bool:
        return (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == module
                and any(a.name == name for a in node.names))

    unguarded = any(matches(n) for n in tree.body)
    guarded = any(matches(n) for t in tree.body if isinstance(t, ast.Try)
                  for s in t.body for n in ast.walk(s))
    return unguarded, guarded


def top_level_function(tree: ast.Module, name: str) -> Optional[ast.FunctionDef]:
    """The module-level `def name`, or None."""
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def calls_without_keyword(node: ast.AST, callee: str, keyword: str) -> List[ast.Call]:
    """Calls of `callee` (dotted name, e.g. 'torch.meshgrid') below `node` that lack `keyword=`."""
    return [c for c in ast.walk(node)
            if isinstance(c, ast.Call) and dotted(c.func) == callee
            and not any(k.arg == keyword for k in c.keywords)]
