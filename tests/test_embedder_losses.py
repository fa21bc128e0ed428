"""UniME losses against an independent NumPy computation, including the false-negative filter's edge cases."""

import numpy as np
import pytest
import torch

from modgap.embedder import DistillationKL, HardNegativeInfoNCE


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_infonce(q, c, positive, tau, beta, k):
    s = _unit(q.astype(np.float64)) @ _unit(c.astype(np.float64)).T
    losses = []
    for i in range(len(q)):
        pos = s[i, positive[i]]
        pool = [(-s[i, j], j) for j in range(len(c)) if j != positive[i] and s[i, j] <= pos + beta]
        negatives = [s[i, j] for _, j in sorted(pool)[:k]]  # most similar first, earlier column on ties
        logits = np.array([pos, *negatives]) / tau
        losses.append(-(logits[0] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
    return float(np.mean(losses))


def reference_kl(sq, sc, tq, tc, ts, tt):
    def log_softmax(a):
        a = a - a.max(axis=1, keepdims=True)
        return a - np.log(np.exp(a).sum(axis=1, keepdims=True))

    ls = log_softmax(_unit(sq) @ _unit(sc).T / ts)
    lt = log_softmax(_unit(tq) @ _unit(tc).T / tt)
    return float((np.exp(lt) * (lt - ls)).sum(axis=1).mean())


@pytest.mark.parametrize(("beta", "k"), [(0.1, 8), (0.1, 2), (0.0, 3), (-1.0, 4), (10.0, 100)])
def test_infonce_with_filter_and_hard_negatives_matches_numpy(beta, k):
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(12, 16)), rng.normal(size=(20, 16))
    positive = rng.permutation(20)[:12]
    loss = HardNegativeInfoNCE(temperature=0.05, fn_margin=beta, hard_negatives=k)(
        torch.tensor(q), torch.tensor(c), torch.tensor(positive)
    )
    assert loss.item() == pytest.approx(reference_infonce(q, c, positive, 0.05, beta, k), rel=1e-9)


def test_filter_edge_cases_ties_and_nothing_left():
    # Query 0: candidates 1 and 2 tie (same vector); with k=1 the earlier column is the negative.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    loss = HardNegativeInfoNCE(temperature=0.1, fn_margin=0.1, hard_negatives=1)
    got = loss(q, c, torch.tensor([0, 3]))
    want = reference_infonce(q.numpy(), c.numpy(), [0, 3], 0.1, 0.1, 1)
    assert got.item() == pytest.approx(want, rel=1e-5)  # float32 inputs
    # Every candidate beats the positive by more than the margin: all filtered, the loss is 0, not NaN.
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]])
    assert HardNegativeInfoNCE(fn_margin=0.1)(q, c, torch.tensor([0])).item() == 0.0
    # Gradients flow through the kept similarities only, and are finite.
    q.requires_grad_(True)
    HardNegativeInfoNCE(fn_margin=5.0, hard_negatives=1)(q, c, torch.tensor([0])).backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_distillation_kl_matches_numpy_and_is_zero_for_equal_geometry():
    rng = np.random.default_rng(1)
    sq, tq = rng.normal(size=(6, 16)), rng.normal(size=(6, 32))  # teacher of another width
    kl = DistillationKL(student_temperature=0.05, teacher_temperature=0.1)
    got = kl(torch.tensor(sq), torch.tensor(sq), torch.tensor(tq), torch.tensor(tq))
    assert got.item() == pytest.approx(reference_kl(sq, sq, tq, tq, 0.05, 0.1), rel=1e-9)
    same = kl(torch.tensor(sq), torch.tensor(sq), torch.tensor(sq), torch.tensor(sq))
    assert DistillationKL(0.1, 0.1)(*(torch.tensor(sq),) * 4).item() == pytest.approx(0.0, abs=1e-12)
    assert same.item() > 0  # different temperatures: different distributions
