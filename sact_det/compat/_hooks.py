"""Run patch functions around the import of named modules (lazy, so nothing is imported early).

`when_imported(name, after=fn)` calls `fn(module)` right after `name` has executed its body, before
anything that imported it continues (so `from name import x` elsewhere already sees the patched x);
if `name` is already imported, `fn` runs at once. `before=fn` runs `fn()` just before the body runs
and `fn`'s return value (a callable or None) is called right after it, for temporary shims.
"""
import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence

AfterHook = Callable[[ModuleType], None]
BeforeHook = Callable[[], Optional[Callable[[], None]]]

_AFTER: Dict[str, List[AfterHook]] = {}
_BEFORE: Dict[str, List[BeforeHook]] = {}
_LOCK = threading.RLock()


class _PatchingLoader(importlib.abc.Loader):
    """Wraps the real loader of a hooked module; everything else is delegated to it."""

    def __init__(self, loader: Any, fullname: str) -> None:
        self._loader = loader
        self._fullname = fullname

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        undo = [fn() for fn in _BEFORE.get(self._fullname, [])]
        try:
            self._loader.exec_module(module)
        finally:
            for u in undo:
                if u is not None:
                    u()
        for fn in _AFTER.get(self._fullname, []):
            fn(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._loader, name)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds hooked modules with the other finders and wraps their loader."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None):
        if fullname not in _AFTER and fullname not in _BEFORE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


_FINDER = _PatchingFinder()


def _install_finder() -> None:
    if not any(isinstance(f, _PatchingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)


def not_yet_imported(names: Sequence[str]) -> List[str]:
    """The modules of `names` that have not been imported yet (a `before` hook can still run)."""
    return [n for n in names if n not in sys.modules]


def when_imported(
    name: str, after: Optional[AfterHook] = None, before: Optional[BeforeHook] = None
) -> None:
    """Register hooks for module `name` (see module docstring). Each hook is registered once."""
    with _LOCK:
        _install_finder()
        if before is not None and before not in _BEFORE.setdefault(name, []):
            _BEFORE[name].append(before)
        if after is not None and after not in _AFTER.setdefault(name, []):
            _AFTER[name].append(after)
            module = sys.modules.get(name)
            if module is not None:
                after(module)
