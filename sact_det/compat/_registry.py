"""The record of compat decisions: each applied patch with what was detected."""
from dataclasses import asdict, dataclass
from typing import Dict, List


@dataclass(frozen=True)
class Patch:
    """One change compat makes because a feature detection said it is needed.

    name:     short id (stable; tests and bug reports use it)
    target:   what is changed (module attribute, import, sact_det function)
    detected: the feature found in this environment that makes the change necessary
    change:   what compat does instead
    """

    name: str
    target: str
    detected: str
    change: str


_APPLIED: Dict[str, Patch] = {}


def record(patch: Patch) -> None:
    """Note `patch` as applied (idempotent: the same name keeps its first record)."""
    _APPLIED.setdefault(patch.name, patch)


def applied() -> List[Patch]:
    """Applied patches in the order they were decided."""
    return list(_APPLIED.values())


def as_dict() -> Dict[str, Dict[str, str]]:
    """{name: {"target", "detected", "change"}} for status()."""
    return {p.name: {k: v for k, v in asdict(p).items() if k != "name"} for p in applied()}
