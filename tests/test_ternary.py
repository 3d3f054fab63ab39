"""Properties of per-group ternarization, checked through the public ``ternarize``."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fgq_pipeline import ternarize


def group_error(w: torch.Tensor, t: torch.Tensor) -> float:
    """Least-squares error of the best alpha >= 0 for fixed codes t."""
    norm = float((t * t).sum())
    alpha = max(0.0, float((w * t).sum()) / norm) if norm else 0.0
    return float(((w - alpha * t) ** 2).sum())


def brute_force_error(w: torch.Tensor) -> float:
    codes = itertools.product((-1.0, 0.0, 1.0), repeat=w.numel())
    return min(group_error(w, torch.tensor(c)) for c in codes)


weights = st.integers(0, 2**31 - 1).map(lambda seed: torch.randn(6, 13, 3, 3, generator=torch.Generator().manual_seed(seed)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6))
def test_exact_solver_matches_brute_force_over_all_ternary_vectors(seed, n):
    w = torch.randn(1, n, generator=torch.Generator().manual_seed(seed))
    result = ternarize(w, group_size=n, solver="exact")
    assert float(((w - result.dequantize()) ** 2).sum()) == pytest.approx(brute_force_error(w[0]), rel=1e-5, abs=1e-6)


def test_exact_solver_handles_ties_and_zeros_like_brute_force():
    for group in ([1.0, 1.0, 1.0, 0.0], [2.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, -3.0, 0.5, 0.5]):
        w = torch.tensor([group])
        err = float(((w - ternarize(w, 4).dequantize()) ** 2).sum())
        assert err == pytest.approx(brute_force_error(w[0]), abs=1e-6)


@settings(max_examples=20, deadline=None)
@given(w=weights, n=st.sampled_from([1, 2, 3, 4, 8, 16, 64, "filter", "layer"]))
def test_exact_is_never_worse_than_twn_on_any_group(w, n):
    exact = ternarize(w, n, "exact")
    twn = ternarize(w, n, "twn")
    # Compare group by group: per-group squared error, grouped as the scales are.
    err_exact = (w - exact.dequantize()) ** 2
    err_twn = (w - twn.dequantize()) ** 2
    per_group = lambda e: _sum_per_group(e, n)
    assert torch.all(per_group(err_exact) <= per_group(err_twn) + 1e-6)


def _sum_per_group(err: torch.Tensor, n) -> torch.Tensor:
    if n == "layer":
        return err.sum().reshape(1)
    if n == "filter":
        return err.flatten(1).sum(1)
    c = err.shape[1]
    n = min(n, c)
    padded = torch.nn.functional.pad(err.movedim(1, -1), (0, -(-c // n) * n - c))
    return padded.reshape(*padded.shape[:-1], -1, n).sum(-1)


@settings(max_examples=20, deadline=None)
@given(w=weights, n=st.sampled_from([1, 2, 4, 5, 13, 64]), solver=st.sampled_from(["exact", "twn", "asymmetric"]))
def test_codes_are_ternary_int8_shaped_like_the_weight(w, n, solver):
    result = ternarize(w, n, solver)
    assert result.codes.dtype == torch.int8
    assert result.codes.shape == w.shape
    assert set(result.codes.unique().tolist()) <= {-1, 0, 1}
    assert result.dequantize().shape == w.shape
    assert torch.all(result.scales >= 0)


@pytest.mark.parametrize("solver", ["exact", "twn", "asymmetric"])
def test_group_size_one_reproduces_the_weights_exactly(solver):
    w = torch.randn(8, 5, 3, 3)
    assert torch.equal(ternarize(w, 1, solver).dequantize(), w)


@pytest.mark.parametrize("n", [2, 4, 7])
def test_groups_never_cross_filters_or_kernel_positions(n):
    """Changing one (filter, kernel position) channel vector changes no other group's output."""
    w = torch.randn(4, 10, 3, 3)
    changed = w.clone()
    changed[2, :, 1, 0] *= 5.0
    before, after = ternarize(w, n).dequantize(), ternarize(changed, n).dequantize()
    same = torch.ones_like(w, dtype=torch.bool)
    same[2, :, 1, 0] = False
    assert torch.equal(before[same], after[same])


def test_last_partial_group_when_channels_not_a_multiple_of_n():
    w = torch.randn(2, 3, 3, 3)  # C = 3, like a first conv, groups of 2: sizes 2 and 1
    result = ternarize(w, 2)
    assert result.scales.shape == (2, 2, 3, 3)
    # The one-weight last group is exact: alpha = |w|.
    assert torch.allclose(result.dequantize()[:, 2], w[:, 2])


def test_group_size_above_channel_count_is_capped():
    w = torch.randn(8, 16, 3, 3)
    assert ternarize(w, 64).effective_group_size == 16
    assert torch.equal(ternarize(w, 64).dequantize(), ternarize(w, 16).dequantize())


def test_group_of_four_within_a_linear_layer_matches_a_hand_computed_case():
    w = torch.tensor([[0.9, -1.1, 0.1, 0.0, 2.0, 2.0, 2.0, -2.0]])
    result = ternarize(w, 4)
    assert result.codes.tolist() == [[1, -1, 0, 0, 1, 1, 1, -1]]
    assert torch.allclose(result.scales, torch.tensor([[1.0, 2.0]]))


def test_asymmetric_keeps_separate_scales_per_sign():
    w = torch.tensor([[3.0, 3.0, -1.0, -1.0]])
    result = ternarize(w, 4, "asymmetric")
    assert torch.allclose(result.dequantize(), w)
    assert result.neg_scales is not None


@pytest.mark.parametrize("bad", [0, -4, 2.5, "4", None, True])
def test_bad_group_size_is_rejected_with_its_value(bad):
    with pytest.raises(ValueError, match="group_size"):
        ternarize(torch.randn(4, 4), bad)


def test_unknown_solver_and_non_finite_weights_are_rejected():
    with pytest.raises(ValueError, match="'nope'"):
        ternarize(torch.randn(4, 4), 4, "nope")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ternarize(torch.tensor([[1.0, float("nan")]]), 2)
