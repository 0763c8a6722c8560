"""Warnings that today's torch raises on detectron2 / fvcore code and that a sact_det user cannot
act on. Both decisions are made by detection:

- `torch.jit.script` emits a FutureWarning (torch 2.14 deprecates it; probed by scripting a small
  dict, which compiles nothing): while a detectron2 / fvcore module that scripts at import time
  executes, that one warning is ignored.
- `torch.meshgrid`'s `indexing` defaults to None (omitting it warns) and a module-level detectron2
  function calls `torch.meshgrid` without `indexing=` (0.6 and main: anchor_generator's
  `_create_grid_offsets`): that function is recompiled from its own source with `indexing="ij"`
  added, the value torch uses when it is omitted. Signature, body and TorchScript-ability stay
  detectron2's (whatever the version), so nothing but the warning changes.
"""
import ast
import inspect
import linecache
import re
import textwrap
import types
import warnings
from typing import Callable, Dict, List, Optional

import torch

from . import _source
from ._hooks import not_yet_imported, when_imported
from ._registry import Patch, record

JIT_PACKAGES = ("detectron2", "fvcore")


# ---------------------------------------------------------------- torch.jit.script FutureWarning
def jit_script_warning() -> Optional[str]:
    """The FutureWarning text torch.jit.script emits here, or None if it emits none."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.jit.script({"sact_det_probe": 0})  # a ScriptDict: no compilation
        except Exception:  # noqa: BLE001  (only the warning matters)
            pass
    msgs = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    return msgs[0] if msgs else None


def _scripts_at_import(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if any(_source.dotted(d) == "torch.jit.script" for d in node.decorator_list):
                return True
        value = getattr(node, "value", None)
        if isinstance(value, ast.Call) and _source.dotted(value.func) == "torch.jit.script":
            return True
    return False


def modules_scripting_at_import(packages=JIT_PACKAGES) -> List[str]:
    """Modules of `packages` that call torch.jit.script while they execute (decorator or call)."""
    found = []
    for top in packages:
        for module in _source.modules_matching(top, "jit.script", r"\bjit\.script\b(?!_)"):
            tree = _source.module_tree(module)
            if tree is not None and _scripts_at_import(tree):
                found.append(module)
    return found


def _ignore_jit_warning(message: str) -> Callable[[], Callable[[], None]]:
    def before() -> Callable[[], None]:
        ctx = warnings.catch_warnings()
        ctx.__enter__()
        warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)
        return lambda: ctx.__exit__(None, None, None)

    return before


# ---------------------------------------------------------------- torch.meshgrid without indexing
def meshgrid_indexing_default() -> Optional[object]:
    """torch.meshgrid's `indexing` default (None: omitting it warns), or "absent"."""
    try:
        param = inspect.signature(torch.meshgrid).parameters.get("indexing")
    except (TypeError, ValueError):
        return "absent"
    return "absent" if param is None else param.default


def functions_calling_meshgrid_without_indexing(top: str = "detectron2") -> Dict[str, List[str]]:
    """{module: [module-level undecorated function, ...]} that call torch.meshgrid without indexing."""
    found: Dict[str, List[str]] = {}
    for module in _source.modules_matching(top, "meshgrid(", r"\bmeshgrid\("):
        tree = _source.module_tree(module)
        if tree is None:
            continue
        funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
                 and not n.decorator_list
                 and _source.calls_without_keyword(n, "torch.meshgrid", "indexing")]
        if funcs:
            found[module] = funcs
    return found


def with_meshgrid_indexing(fn: types.FunctionType, indexing: str = "ij") -> types.FunctionType:
    """`fn` recompiled from its own source with `indexing=` added to its torch.meshgrid calls.

    The new function lives in `fn`'s module globals; its source is registered in linecache so
    that inspect (and TorchScript) can read it. `fn` is kept as `_sact_det_original`.
    """
    source = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(source)
    for call in _source.calls_without_keyword(tree, "torch.meshgrid", "indexing"):
        call.keywords.append(ast.keyword(arg="indexing", value=ast.Constant(indexing)))
    ast.fix_missing_locations(tree)
    new_source = ast.unparse(tree) + "\n"
    filename = f"<sact_det.compat: {fn.__module__}.{fn.__name__} with meshgrid indexing={indexing!r}>"
    linecache.cache[filename] = (len(new_source), None, new_source.splitlines(True), filename)
    namespace: Dict[str, object] = {}
    exec(compile(new_source, filename, "exec"), fn.__globals__, namespace)  # noqa: S102
    new = namespace[fn.__name__]
    assert isinstance(new, types.FunctionType)
    new._sact_det_original = fn  # type: ignore[attr-defined]
    return new


def _patch_meshgrid(funcs: List[str]) -> Callable[[types.ModuleType], None]:
    def patch(module: types.ModuleType) -> None:
        for name in funcs:
            fn = getattr(module, name, None)
            if isinstance(fn, types.FunctionType) and not hasattr(fn, "_sact_det_original"):
                setattr(module, name, with_meshgrid_indexing(fn))

    return patch


def apply() -> List[Patch]:
    """Decide and register both warning fixes."""
    patches = []
    message = jit_script_warning()
    modules = not_yet_imported(modules_scripting_at_import()) if message else []
    if modules:
        for name in modules:
            when_imported(name, before=_ignore_jit_warning(message))
        patches.append(Patch(
            "jit_script_import_warning",
            "import of " + ", ".join(modules),
            f"torch.jit.script emits FutureWarning {message!r}; these modules script at "
            "import time",
            "that FutureWarning is ignored while these modules execute (nothing else changes)",
        ))
    default = meshgrid_indexing_default()
    users = functions_calling_meshgrid_without_indexing() if default is None else {}
    if users:
        for module, funcs in users.items():
            when_imported(module, after=_patch_meshgrid(funcs))
        targets = [f"{m}.{f}" for m, fs in users.items() for f in fs]
        patches.append(Patch(
            "meshgrid_indexing",
            ", ".join(targets),
            "torch.meshgrid(indexing=None) warns when indexing is omitted; these functions omit it",
            "recompiled from their own source with indexing='ij' (torch's value when omitted)",
        ))
    for p in patches:
        record(p)
    return patches
