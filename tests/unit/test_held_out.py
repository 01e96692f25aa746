"""The rows the served router was chosen on, kept (router_core.held_out): every candidate's
probabilities there replay the scores the choice compared, and the file round-trips."""

import numpy as np
import pyarrow as pa
import pytest

from router_core.errors import ArtifactError
from router_core.held_out import COST, SCORE, from_table, to_table
from router_core.routers import RouterInputs, TaskPrior, TrunkRouter
from router_core.selection import OperatingRule, OutOfFold, choose_serving


class _Noise(TrunkRouter):
    """A router that knows nothing: seeded noise per query, reading ``needs``."""

    def __init__(self, K: int, needs: str, seed: int = 0):
        self.K, self.seed, self.needs = K, seed, (needs,)

    def predict_proba(self, x):
        return np.random.default_rng(self.seed + x.n).uniform(0.05, 0.95, (x.n, self.K))


def _pool(n: int = 400, K: int = 3, seed: int = 5):
    rng = np.random.default_rng(seed)
    tasks = [["a", "b", "c", "d"][i % 4] for i in range(n)]
    rate = np.array([[0.9, 0.5, 0.6], [0.3, 0.8, 0.85], [0.5, 0.5, 0.9], [0.7, 0.9, 0.95]])
    scores = (rng.random((n, K)) < rate[np.arange(n) % 4]).astype(float)
    return tasks, scores, np.tile([1.0, 3.0, 9.0], (n, 1))


def test_validation_rows_replay_each_candidates_first_repeat():
    tasks, scores, costs = _pool()
    n, K = scores.shape
    va = np.arange(n) >= n // 2
    prior = TaskPrior().fit([tasks[i] for i in np.flatnonzero(~va)], scores[~va])
    x = RouterInputs(n=int(va.sum()), tasks=[tasks[i] for i in np.flatnonzero(va)],
                     semantic=np.zeros((int(va.sum()), 4), np.float32))
    routers = {"prefill_trunk": _Noise(K, "prefill"), "semantic_knn": _Noise(K, "semantic", seed=1)}
    sv = choose_serving(routers, prior, x, scores[va], costs[va], best_single=2, folds=2, repeats=5, seed=0,
                        rule=OperatingRule(tolerance=0.005, guard_z=None))
    h, cand = sv.held_out, sv.selection["candidates"]
    assert h.kind == "validation" and len(h.scores) == va.sum() and sorted(np.unique(h.part)) == [0, 1]
    assert {"prefill_trunk", "task_prior", "prefill_trunk_mix", "semantic_knn"} <= set(h.proba) == set(cand)
    for k, v in cand.items():  # blends included: each fold predicted by a blend fitted on the other
        np.testing.assert_allclose(h.per_part(k), v["per_part"][:2], atol=1e-6, err_msg=k)
    assert cand["semantic_knn"]["servable"] is False and sv.winner != "semantic_knn"


def test_out_of_fold_rows_replay_every_part_and_a_semantic_candidate_is_recorded_not_served():
    """A semantic router that nearly knows the answers scores best of all; it is kept with its
    probabilities, for the record, and a prefill router or the prior serves."""
    tasks, scores, costs = _pool(600)
    n, K = scores.shape
    tr, va = np.arange(n) < 400, np.arange(n) >= 400
    part = np.arange(400) % 3
    prior = TaskPrior().fit([tasks[i] for i in np.flatnonzero(tr)], scores[tr])
    rng = np.random.default_rng(0)
    oof = OutOfFold({"prior": prior.predict_proba(RouterInputs(n=400, tasks=tasks[:400])),
                     "prefill_trunk": rng.uniform(0.05, 0.95, (400, K)),
                     "semantic_knn": np.clip(scores[tr] * 0.8 + 0.1 + rng.normal(0, 0.05, (400, K)), 0.01, 0.99)},
                    scores[tr], costs[tr], part, np.arange(400))
    x = RouterInputs(n=200, tasks=tasks[400:], semantic=np.zeros((200, 4), np.float32))
    routers = {"prefill_trunk": _Noise(K, "prefill"), "semantic_knn": _Noise(K, "semantic", seed=1)}
    sv = choose_serving(routers, prior, x, scores[va], costs[va], best_single=2, folds=2, repeats=5, seed=0,
                        rule=OperatingRule(tolerance=0.005, guard_z=None), oof=oof)
    h, cand = sv.held_out, sv.selection["candidates"]
    assert h.kind == "out-of-fold training" and (h.index == np.arange(400)).all() and (h.part == part).all()
    for k, v in cand.items():
        np.testing.assert_allclose(h.per_part(k), v["per_part"], atol=1e-6, err_msg=k)
    assert max(cand, key=lambda k: cand[k]["val_p_auccc"]) == "semantic_knn"
    assert sv.winner != "semantic_knn" and cand["semantic_knn"]["servable"] is False


def test_the_table_round_trips_and_a_damaged_one_is_refused():
    tasks, scores, costs = _pool(40)
    from router_core.held_out import HeldOut

    rng = np.random.default_rng(1)
    h = HeldOut("out-of-fold training", {"b": rng.random((40, 3)), "a": rng.random((40, 3))}, scores, costs,
                np.arange(40) % 2, np.arange(40))
    qids = [f"q{i}" for i in range(40)]
    t = to_table(h, qids, ["t0", "t1", "t2"])
    assert t.num_rows == 40 * 4 and t.column_names == ["row", "query_id", "part", "candidate", "t0", "t1", "t2"]
    # Read back in any row order (a filter or a concatenation of tables may reorder rows).
    shuffled = t.take(pa.array(np.random.default_rng(2).permutation(t.num_rows)))
    g, gq, targets = from_table(shuffled)
    assert gq == qids and targets == ["t0", "t1", "t2"] and g.kind == h.kind and (g.part == h.part).all()
    assert set(g.proba) == {"a", "b"} and all(np.array_equal(g.proba[k], h.proba[k]) for k in h.proba)
    assert np.array_equal(g.scores, scores) and np.array_equal(g.costs, costs)
    cand = t.column("candidate").to_pylist()
    with pytest.raises(ArtifactError, match=f"no {COST} rows"):
        from_table(t.filter(pa.array([c != COST for c in cand])), "m/held_out.parquet")
    with pytest.raises(ArtifactError, match="rows 0..39 once"):
        from_table(t.slice(0, t.num_rows - 1))
    assert SCORE in cand


def test_the_replay_reads_a_model_chosen_on_validation_rows(tmp_path):
    """Validation rows are scored over 5 repeats of 2 folds; the file holds the first repeat, and
    the replay keeps all 10 recorded scores, checking the first 2 against the file."""
    import json

    import pyarrow.parquet as pq

    from tests.bench.replay_choice import candidates

    tasks, scores, costs = _pool()
    n, K = scores.shape
    va = np.arange(n) >= n // 2
    prior = TaskPrior().fit([tasks[i] for i in np.flatnonzero(~va)], scores[~va])
    x = RouterInputs(n=int(va.sum()), tasks=[tasks[i] for i in np.flatnonzero(va)])
    sv = choose_serving({"prefill_trunk": _Noise(K, "prefill")}, prior, x, scores[va], costs[va], best_single=2,
                        folds=2, repeats=5, seed=0, rule=OperatingRule(tolerance=0.005, guard_z=None))
    h = sv.held_out
    pq.write_table(to_table(h, [f"q{i}" for i in range(len(h.scores))], ["a", "b", "c"]), tmp_path / "held_out.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({"selection": sv.selection, "held_out": "held_out.parquet"}))
    scored, kept = candidates(tmp_path)
    assert set(scored) == set(sv.selection["candidates"]) and kept.kind == "validation"
    for k, s in scored.items():
        assert s.per_part.tolist() == sv.selection["candidates"][k]["per_part"] and s.oof.shape == (len(h.scores), K)
    sv.selection["candidates"]["prefill_trunk"]["per_part"][0] += 0.01  # a file that does not match what was chosen
    (tmp_path / "manifest.json").write_text(json.dumps({"selection": sv.selection, "held_out": "held_out.parquet"}))
    with pytest.raises(SystemExit, match="prefill_trunk's per-part scores"):
        candidates(tmp_path)
