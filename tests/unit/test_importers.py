import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from router_core import importers
from router_core.errors import DataError
from router_core.schemas import Pool, PoolModel
from router_core.validation import validate
from tests.conftest import shared_file


def _csv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


RB_HEADER = ["sample_id", "prompt", "eval_name", "m1", "m2", "m1|model_response", "m2|model_response",
             "m1|total_cost", "m2|total_cost", "oracle_model_to_route_to", "split"]


def test_routerbench_blank_cells_are_not_measured_and_repeated_ids_are_kept():
    rows = [
        ["a.1", "Q one\nwith a newline", "arc", "1.0", "0.0", "A", "B", "0.001", "0.01", "m1", "train"],
        ["a.2", "Q two", "arc", "", "1.0", "A", "B", "0.002", "0.02", "m2", "test"],
        ["a.1", "Q one again", "arc", "0.0", "", "A", "B", "0.003", "0.03", "m1", "test"],
    ]
    res = importers.import_routerbench(_csv(RB_HEADER, rows))
    ds = res.dataset
    assert ds.queries.column("query_id").to_pylist() == ["a.1", "a.2", "a.1#2"]
    assert ds.queries.column("text").to_pylist()[0] == "Q one\nwith a newline"
    assert res.counts == {"source_rows": 3, "models": 2, "cells": 6, "blank_cells": 2, "outcomes": 4,
                          "cells_rejected": 0, "renamed_duplicate_ids": 1}
    pairs = set(zip(ds.outcomes.column("query_id").to_pylist(), ds.outcomes.column("model").to_pylist()))
    assert ("a.2", "m1") not in pairs and ("a.1#2", "m2") not in pairs
    assert ds.outcomes.column("cost_usd").to_pylist() == [0.001, 0.01, 0.02, 0.003]
    assert validate(ds).ok


def test_routerbench_unconvertible_cell_goes_to_rejects():
    rows = [["a.1", "Q", "arc", "maybe", "1", "A", "B", "0.1", "x", "m1", "train"]]
    pool = Pool(models=[PoolModel(name=m, price_in_per_mtok=1, price_out_per_mtok=1) for m in ("m1", "m2")])
    res = importers.import_routerbench(_csv(RB_HEADER, rows), pool=pool)
    reasons = [(r["column"], r["reason"]) for r in res.rejects.to_pylist()]
    assert reasons == [("m1", "score 'maybe' is not a number"), ("m2|total_cost", "cost 'x' is not a number")]
    assert res.counts["cells"] == res.counts["outcomes"] + res.counts["blank_cells"] + res.counts["cells_rejected"]


def test_estimate_prices_recovers_known_prices():
    rng = np.random.default_rng(0)
    tin, tout = rng.integers(10, 800, 500).astype(float), rng.integers(1, 300, 500).astype(float)
    cost = tin * 10e-6 + tout * 30e-6
    a, b = importers.estimate_prices(tin, tout, cost)
    assert a * 1e6 == pytest.approx(10.0) and b * 1e6 == pytest.approx(30.0)
    a, b = importers.estimate_prices(tin, None, tin * 2e-6)
    assert a == b == pytest.approx(2e-6)


def test_estimate_prices_never_negative():
    tin = np.array([100.0, 200.0, 300.0])
    tout = np.array([300.0, 10.0, 5.0])
    a, b = importers.estimate_prices(tin, tout, np.array([0.3, 0.01, 0.005]))
    assert a >= 0 and b >= 0


def test_llmrouter_keeps_graded_scores_and_prices_from_candidates():
    text = _csv(["split", "task_name", "metric", "ground_truth", "question", "m1", "m2"],
                [["train", "gsm8k", "em", "4", "2+2?", "1.0", "0.5714285714"],
                 ["test", "mmlu", "em", "B", "Pick B", "0.0", "1.0"]])
    cands = '{"m1": {"input_price": 0.2, "output_price": 0.3}, "m3": {"input_price": 1, "output_price": 1}}'
    res = importers.import_llmrouter(text, cands)
    assert res.dataset.outcomes.column("score").to_pylist() == [1.0, 0.5714285714, 0.0, 1.0]
    assert res.dataset.pool.names == ["m1"]
    assert any("no price for m2" in n for n in res.notes)
    checked = validate(res.dataset)
    assert checked.counts["outcomes_rejected"] == 2  # m2 has no price: rejected, not dropped
    assert {r["reason"] for r in checked.rejects.to_pylist()} == {"model not in pool.yaml"}


def test_routellm_split_is_a_stable_seeded_hash():
    rows = [[f"prompt {i}", "True", "False" if i % 3 else "True", "algebra", "mmlu"] for i in range(300)]
    text = _csv(["prompt", "weak", "strong", "subject", "benchmark"], rows)
    with pytest.raises(DataError, match="no default price for weak, strong"):
        importers.import_routellm(text)
    pool = Pool(models=[PoolModel(name="weak", price_in_per_mtok=0.6, price_out_per_mtok=0.6),
                        PoolModel(name="strong", price_in_per_mtok=10, price_out_per_mtok=30)])
    a = importers.import_routellm(text, pool=pool, seed=1)
    b = importers.import_routellm(_csv(["prompt", "weak", "strong", "subject", "benchmark"], rows[::-1]),
                                  pool=pool, seed=1)
    split_a = dict(zip(a.dataset.queries.column("query_id").to_pylist(), a.dataset.queries.column("split").to_pylist()))
    split_b = dict(zip(b.dataset.queries.column("query_id").to_pylist(), b.dataset.queries.column("split").to_pylist()))
    assert split_a == split_b  # independent of file order
    fracs = {s: list(split_a.values()).count(s) / 300 for s in ("train", "val", "test")}
    assert 0.12 < fracs["test"] < 0.28 and 0.04 < fracs["val"] < 0.17
    c = importers.import_routellm(text, pool=pool, seed=2)
    assert c.dataset.queries.column("split").to_pylist() != a.dataset.queries.column("split").to_pylist()
    assert a.dataset.queries.column("task").to_pylist()[0] == "mmlu/algebra"
    assert a.dataset.outcomes.num_rows == 600


# -- the real published files (skip where ../shared/data is absent) ----------------------------

def test_real_routerbench_subset_reconciles():
    text = shared_file("routerbench-subset/routerbench_wide.csv").read_text(encoding="utf-8")
    res = importers.import_routerbench(text)
    checked = validate(res.dataset)
    assert checked.ok
    c = res.counts
    assert (c["source_rows"], c["models"]) == (3178, 11)
    assert c["cells"] == 3178 * 11 == c["outcomes"] + c["blank_cells"]
    s = checked.counts
    assert s["queries_ok"] == 3178 and s["outcomes_ok"] == c["outcomes"]
    splits = res.dataset.queries.column("split").to_pylist()
    assert (splits.count("train"), splits.count("test")) == (2225, 953)
    # Estimated prices land near the providers' list prices (gpt-4-1106-preview: $10 / $30).
    gpt4 = res.dataset.pool.get("gpt-4-1106-preview")
    assert 8 < gpt4.price_in_per_mtok < 12 and 24 < gpt4.price_out_per_mtok < 36


def test_real_llmrouter_reconciles():
    scores = shared_file("llmrouter-9/scores_wide.csv")
    cands = shared_file("llmrouter-9/llm_candidates.json").read_text()
    res = importers.import_llmrouter(scores.read_text(encoding="utf-8"), cands)
    checked = validate(res.dataset)
    assert checked.ok and res.counts["source_rows"] == 6108 and res.counts["models"] == 9
    assert checked.counts["outcomes_ok"] == 6108 * 9 - res.counts["blank_cells"]
    graded = [s for s in res.dataset.outcomes.column("score").to_pylist() if 0 < s < 1]
    assert graded, "graded scores must be kept, not rounded"


def test_real_routellm_reconciles():
    text = shared_file("routellm-2/mmlu_gsm8k_wide.csv").read_text(encoding="utf-8")
    res = importers.import_routellm(text)
    checked = validate(res.dataset)
    assert checked.ok and res.counts["source_rows"] == 15361 and res.counts["models"] == 2
    assert checked.counts["outcomes_ok"] == 2 * 15361


# -- the compact RouterBench copy that make demo imports (examples/routerbench) -------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routerbench" / "routerbench_compact.csv.gz"


def test_the_compact_layout_imports_to_the_same_dataset_and_prices():
    rows = [
        ["a.1", "Q one\nwith a newline", "arc", "1.0", "0.0", "A long answer", "B", "0.001", "0.01", "m1", "train"],
        ["a.2", "Q, two", "arc", "", "1.0", "", "Bb \"quoted\"", "0.002", "0.02", "m2", "test"],
        ["a.3", "Q three", "arc", "0.0", "1", "Ans\r\nwer", "B" * 90, "0.0015", "0.05", "m2", "test"],
    ]
    full = _csv(RB_HEADER, rows)
    compact = importers.compact_routerbench(full)
    assert compact.splitlines()[0] == ("sample_id,prompt,eval_name,m1,m2,m1|response_chars,m2|response_chars,"
                                       "m1|total_cost,m2|total_cost,split")
    a, b = importers.import_routerbench(full), importers.import_routerbench(compact)
    assert a.dataset.queries.equals(b.dataset.queries) and a.dataset.outcomes.equals(b.dataset.outcomes)
    assert a.dataset.pool == b.dataset.pool and a.counts == b.counts
    # gzip, found by its magic bytes whatever the file is called
    assert importers.decode_source(gzip.compress(compact.encode()), "x.csv") == compact


def test_a_bad_response_count_or_gzip_names_the_file_row_and_column():
    compact = importers.compact_routerbench(_csv(RB_HEADER, [
        ["a.1", "Q", "arc", "1", "0", "A", "B", "0.001", "0.01", "m1", "train"],
        ["a.2", "Q", "arc", "1", "0", "A", "B", "0.001", "0.01", "m1", "train"]]))
    bad = compact.replace("\na.2,Q,arc,1,0,1,1,", "\na.2,Q,arc,1,0,1,many,")
    with pytest.raises(DataError, match=r"^rb\.csv: row 1, column m2\|response_chars: 'many' is not a character count$"):
        importers.import_routerbench(bad, "rb.csv")
    with pytest.raises(DataError, match=r"^rb\.csv\.gz: not a readable gzip file"):
        importers.decode_source(gzip.compress(b"abc")[:-6], "rb.csv.gz")
    with pytest.raises(DataError, match=r"^rb\.csv: not valid UTF-8 at byte 1$"):
        importers.decode_source(b"a\xff", "rb.csv")


def test_the_shipped_copy_is_the_full_subset_without_responses():
    """The committed copy is what build.py makes of the full CSV, and both import alike: the same
    queries, outcomes, splits and estimated prices."""
    text = shared_file("routerbench-subset/routerbench_wide.csv").read_text(encoding="utf-8")
    shipped = importers.decode_source(EXAMPLE.read_bytes(), str(EXAMPLE))
    assert shipped == importers.compact_routerbench(text), "rebuild it: python examples/routerbench/build.py"
    a, b = importers.import_routerbench(text), importers.import_routerbench(shipped, EXAMPLE.name)
    assert a.dataset.queries.equals(b.dataset.queries) and a.dataset.outcomes.equals(b.dataset.outcomes)
    assert a.dataset.pool == b.dataset.pool and a.counts == b.counts
    assert b.counts["source_rows"] == 3178 and b.counts["outcomes"] == 34804
    assert EXAMPLE.stat().st_size < 1_000_000
