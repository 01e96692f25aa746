import numpy as np
import torch

from router_core.model import Preprocessor, SharedTrunkNet, TrainParams, fit_trunk, masked_bce, predict_proba


def test_masked_bce_ignores_unmeasured_pairs():
    logits = torch.tensor([[10.0, -10.0]])
    y = torch.tensor([[1.0, 0.0]])
    full = masked_bce(logits, y, torch.tensor([[1.0, 1.0]]))
    # The second target is "not measured": a label of 1 there must not count.
    masked = masked_bce(logits, torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(full) < 1e-3 and float(masked) < 1e-3
    assert float(masked_bce(logits, torch.tensor([[1.0, 1.0]]), torch.ones(1, 2))) > 4


def test_net_overfits_one_batch():
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    y = (torch.rand(32, 3) > 0.5).float()
    net = SharedTrunkNet(16, 3, dropouts=(0.0, 0.0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = masked_bce(net(x), y, torch.ones_like(y))
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_training_is_deterministic_and_learns_a_signal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)).astype(np.float32)
    s = np.stack([(x[:, 0] > 0), (x[:, 1] > 0.5)], axis=1).astype(float)
    s[:100, 1] = np.nan
    pre = Preprocessor().fit(x[:400])
    xt, xv = pre.transform(x[:400]), pre.transform(x[400:])
    p = TrainParams(lr=1e-2, max_epochs=40, patience=5, batch_size=128)
    a, va, _ = fit_trunk(xt, s[:400], xv, s[400:], p, seed=7)
    b, vb, _ = fit_trunk(xt, s[:400], xv, s[400:], p, seed=7)
    assert va == vb
    for ta, tb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(ta, tb)
    proba = predict_proba([a], xv)
    acc = ((proba[:, 0] > 0.5) == (s[400:, 0] > 0.5)).mean()
    assert proba.shape == (200, 2) and acc > 0.85


def test_preprocessor_round_trips_its_state():
    x = np.random.default_rng(1).normal(size=(50, 6))
    pre = Preprocessor(pca_dim=3).fit(x)
    again = Preprocessor.from_state(pre.state())
    assert np.array_equal(pre.transform(x), again.transform(x)) and again.out_dim == 3
