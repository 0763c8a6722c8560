"""torch.jit.trace / torch.export of a SACT backbone: the recorded graph is correct on other images.

The eager forward stops a stage once every position halted; a recorded graph must not freeze that
decision, so while recording every unit runs masked. PonderOutputs returns the ponder maps.
"""
import warnings

import pytest
import torch
from detectron2.modeling import build_backbone

from sact_det.modeling.sact import backbone as backbone_module
from sact_det.modeling.sact.export import PonderOutputs
from sact_det.modeling.halting.branches import GlobalHalting, SpatialHalting
from tests.helpers import randomize_bn, tiny_cfg

TOL = dict(atol=1e-5, rtol=1e-5)


def _image(scale: float, shift: float) -> torch.Tensor:
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * scale + shift


def _model(mode: str):
    """R18 SACT / ACT backbone, an image on which a stage stops early (every position halted after
    its first unit) and another image on which it does not. Returns (backbone, first, other)."""
    torch.manual_seed(0)
    bb = build_backbone(tiny_cfg(depth=18, mode=mode)).eval()
    randomize_bn(bb)
    g = torch.Generator().manual_seed(0)
    for m in bb.modules():
        if isinstance(m, SpatialHalting):  # scores mostly from the pooled features: whole maps halt
            m.local_conv.weight.data = torch.randn(m.local_conv.weight.shape, generator=g) * 0.05
            m.local_conv.bias.data.fill_(2.0)
            m.global_conv.weight.data = torch.randn(m.global_conv.weight.shape, generator=g)
        elif isinstance(m, GlobalHalting):
            m.global_conv.weight.data = torch.randn(m.global_conv.weight.shape, generator=g)
            m.global_conv.bias.data.fill_(-1.0)
    return (bb, _image(3.0, 1.0), _image(1.0, 0.0)) if mode == "sact" else (bb, _image(0.3, -1.0), _image(1.0, 0.0))


def _eager(bb, x):
    with torch.no_grad():
        out = PonderOutputs(bb)(x)
    units = {k: len(p.masks) for k, p in bb.last_ponder.items()}
    return out, units


def _trace(module, x):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings from detectron2's Conv2d (x.numel() == 0 check)
        return torch.jit.trace(module, x, strict=False)


@pytest.mark.parametrize("mode", ["sact", "act"])
def test_traced_backbone_equals_eager_on_another_image(mode):
    bb, first, other = _model(mode)
    ref_first, units_first = _eager(bb, first)
    ref, units_other = _eager(bb, other)
    # premise: the eager forward on the tracing image skips units that the other image runs
    assert any(units_first[k] < units_other[k] for k in units_first), (units_first, units_other)
    traced = _trace(PonderOutputs(bb), first)
    with torch.no_grad():
        got = traced(other)
        again = traced(first)
    assert set(got) == set(ref) and {"res4/ponder_cost", "res4/num_units"} <= set(got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], **TOL)
        torch.testing.assert_close(again[k], ref_first[k], **TOL)


def test_tracing_records_no_early_exit(monkeypatch):
    """Without the recording guard, the trace would freeze the tracing image's early exit."""
    bb, first, other = _model("sact")
    ref, _ = _eager(bb, other)
    monkeypatch.setattr(backbone_module, "capturing_graph", lambda: False)
    with torch.no_grad():
        got = _trace(PonderOutputs(bb), first)(other)
    assert not torch.allclose(got["res4"], ref["res4"], **TOL)


def test_traced_sparse_execution_equals_eager_sparse():
    """EXECUTION sparse is eager-only: the recorded graph runs the masked dense path (same function)."""
    bb, first, other = _model("sact")
    bb.set_execution("sparse")
    ref, _ = _eager(bb, other)
    traced = _trace(PonderOutputs(bb), first)
    with torch.no_grad():
        got = traced(other)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-4 * float(ref[k].abs().max()), rtol=1e-4)


def test_torch_export_equals_eager_on_another_image():
    bb, first, other = _model("sact")
    ref, _ = _eager(bb, other)
    with torch.no_grad():
        program = torch.export.export(PonderOutputs(bb), (first,))
        got = program.module()(other)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], **TOL)


def test_ponder_outputs_needs_a_sact_backbone():
    with pytest.raises(TypeError, match="last_ponder"):
        PonderOutputs(torch.nn.Conv2d(3, 3, 1))
