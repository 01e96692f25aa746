import numpy as np
import torch

from router_core.model import (Preprocessor, SharedTrunkNet, TrainParams, fit_trunk, masked_bce, pairwise_loss,
                                predict_proba, trunk_loss)


def test_masked_bce_ignores_unmeasured_pairs():
    logits = torch.tensor([[10.0, -10.0]])
    y = torch.tensor([[1.0, 0.0]])
    full = masked_bce(logits, y, torch.tensor([[1.0, 1.0]]))
    # The second target is "not measured": a label of 1 there must not count.
    masked = masked_bce(logits, torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(full) < 1e-3 and float(masked) < 1e-3
    assert float(masked_bce(logits, torch.tensor([[1.0, 1.0]]), torch.ones(1, 2))) > 4


def test_pairwise_loss_scores_the_order_of_measured_targets_only():
    y = torch.tensor([[1.0, 0.0, 0.5]])
    m = torch.ones(1, 3)
    # Two pairs ordered by score: (0 > 1, weight 1), (0 > 2, 0.5), (2 > 1, 0.5).
    z = torch.tensor([[0.3, -0.2, 0.1]])
    sp = torch.nn.functional.softplus
    by_hand = (sp(-(z[0, 0] - z[0, 1])) + 0.5 * sp(-(z[0, 0] - z[0, 2])) + 0.5 * sp(-(z[0, 2] - z[0, 1]))) / 2.0
    assert torch.allclose(pairwise_loss(z, y, m), by_hand)
    # A shift of every logit of a query leaves the order, and the loss, unchanged; BCE moves.
    assert torch.allclose(pairwise_loss(z + 5, y, m), pairwise_loss(z, y, m))
    # Reversed order costs more; an unmeasured target takes part in no pair.
    assert pairwise_loss(-z, y, m) > pairwise_loss(z, y, m)
    only = pairwise_loss(z, y, torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(only, sp(-(z[0, 0] - z[0, 1])))
    assert torch.equal(trunk_loss(z, y, m, 0.0), masked_bce(z, y, m))
    assert torch.allclose(trunk_loss(z, y, m, 2.0), masked_bce(z, y, m) + 2 * pairwise_loss(z, y, m))


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


def _trained_like(d_in: int, pca: int | None, members: int, widths: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=3.0, scale=rng.uniform(0.5, 4.0, d_in), size=(400, d_in))
    pre = Preprocessor(pca_dim=pca).fit(x)
    torch.manual_seed(seed)
    nets = [SharedTrunkNet(pre.out_dim, 5, widths, (0.2,) * len(widths)).eval() for _ in range(members)]
    return x, pre, nets


def test_fused_trunk_equals_preprocess_then_members():
    from router_core.model import FusedTrunk, predict_logits

    # folded (narrow member, PCA), stacked unfolded (wide ensemble on PCA), and no PCA at all
    for d_in, pca, members, widths, folded in [(96, 32, 1, (16,), True), (96, 32, 5, (64, 32), False),
                                               (40, None, 3, (16, 8), True)]:
        x, pre, nets = _trained_like(d_in, pca, members, widths)
        fused = FusedTrunk(pre, nets)
        assert fused.folded is folded
        want = predict_logits(nets, pre.transform(x))
        got = fused.logits(x.astype(np.float16))  # stored features are float16
        ref16 = predict_logits(nets, pre.transform(x.astype(np.float16)))
        assert got.shape == want.shape == (members, 400, 5)
        np.testing.assert_allclose(got, ref16, atol=2e-4, rtol=1e-4)
        assert np.abs(got - want).max() < 0.05  # float16 inputs vs float64 ones: rounding only
        np.testing.assert_allclose(fused.logits(x.astype(np.float16), chunk=33), got, atol=1e-6)  # 400 = 12 x 33 + 4


def test_vectors_round_trip_both_layouts():
    import pyarrow as pa

    from router_core.schemas import decode_vectors, encode_vectors

    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float16)
    enc = encode_vectors(x)
    assert enc.type == pa.binary(10) and np.array_equal(decode_vectors(enc, 5), x)
    assert np.array_equal(decode_vectors(pa.chunked_array([enc.slice(0, 3), enc.slice(3)]), 5), x)
    assert np.array_equal(decode_vectors(enc.slice(2, 3), 5), x[2:5])  # an offset into the buffer
    older = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float16()), 5)
    assert np.array_equal(decode_vectors(older, 5), x)
    import pytest

    with pytest.raises(ValueError, match="expected 12 "):
        decode_vectors(enc, 6)
