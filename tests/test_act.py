"""Halting arithmetic against reference vectors computed from the original SACT code and its gradient."""
import pytest
import torch

from sact_det.modeling.halting.state import HaltingState


def _run(h_list, x_list, eps=0.01):
    state = HaltingState(eps=eps)
    out = 0.0
    weights = []
    for l, (h, x) in enumerate(zip(h_list, x_list)):
        w = state.step(h, last=(l == len(h_list) - 1))
        weights.append(w)
        out = out + w * x
    return state, out, weights


@pytest.mark.parametrize(
    "h,rho,n,p,output",
    [
        ([0.999, 0.5, 0.5, 0.5, 0.5], 2.0, 1, [1, 0, 0, 0, 0], 0.0),
        ([0.01, 0.5, 0.6, 0.7, 0.8], 3.49, 3, [0.01, 0.5, 0.49, 0, 0], 1.48),
        ([0.01, 0.01, 0.01, 0.01, 0.77], 5.96, 5, [0.01, 0.01, 0.01, 0.01, 0.96], 3.9),
    ],
)
def test_reference_vectors(h, rho, n, p, output):
    hs = [torch.tensor([[[[v]]]], dtype=torch.float64) for v in h]
    xs = [torch.full((1, 1, 1, 1), float(v), dtype=torch.float64) for v in range(5)]
    state, out, weights = _run(hs, xs)
    assert state.ponder_cost.item() == pytest.approx(rho, abs=1e-9)
    assert state.num_units.item() == n
    assert [w.item() for w in weights] == pytest.approx(p, abs=1e-9)
    assert out.item() == pytest.approx(output, abs=1e-9)


def test_two_positions_and_active_mask():
    maps = [[0.9, 0.1], [0.5, 0.1], [0.8, 0.1]]
    outs = [[1, 2], [3, 4], [5, 6]]
    state = HaltingState(eps=0.01)
    out = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    ran = []
    for l in range(3):
        ran.append(state.active.clone() if state.active is not None else torch.ones(1, 1, 1, 2, dtype=torch.bool))
        h = torch.tensor(maps[l], dtype=torch.float64).view(1, 1, 1, 2)
        w = state.step(h, last=(l == 2))
        out = out + w * torch.tensor(outs[l], dtype=torch.float64).view(1, 1, 1, 2)
    assert state.ponder_cost.flatten().tolist() == pytest.approx([2.1, 3.8])
    assert state.num_units.flatten().tolist() == [2, 3]
    assert out.flatten().tolist() == pytest.approx([1.2, 5.4])
    assert ran[2].flatten().tolist() == [False, True]  # third unit runs only at the second position
    assert not state.active.any()


def test_ponder_gradient_is_minus_one_before_halting_unit():
    h = torch.tensor([0.01, 0.5, 0.6, 0.7, 0.8], dtype=torch.float64, requires_grad=True)
    state = HaltingState(eps=0.01)
    for l in range(5):
        state.step(h[l].view(1, 1, 1, 1), last=(l == 4))
    state.ponder_cost.sum().backward()
    assert h.grad.tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0]  # N = 3


def test_act_shape_broadcasts_per_image():
    state = HaltingState()
    h1 = torch.tensor([0.995, 0.2]).view(2, 1, 1, 1)
    state.step(h1)
    assert state.active.flatten().tolist() == [False, True]
    state.step(None, last=True)
    assert state.ponder_cost.flatten().tolist() == pytest.approx([2.0, 2.8])


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 1.5])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        HaltingState(eps=eps)


def test_step_after_last_unit_is_an_error():
    state = HaltingState()
    state.step(torch.zeros(1, 1, 1, 1), last=True)
    with pytest.raises(RuntimeError):
        state.step(torch.zeros(1, 1, 1, 1))
