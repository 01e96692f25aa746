import math

import pyarrow as pa
import pytest

from router_core import schemas
from router_core.dataset import conform, parse_pool
from router_core.errors import DataError
from router_core.validation import summary, validate
from tests.conftest import make_dataset


def test_clean_dataset_passes(small_dataset):
    res = validate(small_dataset)
    assert res.ok and res.reconciles()
    assert res.counts["queries_ok"] == 8
    assert res.counts["outcomes_ok"] == 15  # q3 has no row for b: not measured, not a 0
    s = summary(res.dataset)
    assert s["splits"] == {"train": 6, "test": 2}
    assert s["outcomes_per_model"] == {"a": 8, "b": 7}


PLANTED = [
    # (query rows, outcome rows, expected (source kind, column, reason fragment))
    ([{"query_id": "q1", "text": "x"}, {"query_id": "q1", "text": "y"}], [], ("queries", "query_id", "duplicate query_id (first at row 0)")),
    ([{"query_id": "", "text": "x"}], [], ("queries", "query_id", "null or empty")),
    ([{"query_id": None, "text": "x"}], [], ("queries", "query_id", "null or empty")),
    ([{"query_id": "q1", "text": None}], [], ("queries", "text", "text is null")),
    ([{"query_id": "q1", "text": "   \n"}], [], ("queries", "text", "whitespace only")),
    ([{"query_id": "q1", "text": "x", "split": "training"}], [], ("queries", "split", "'training' is not one of")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "a", "score": 2.0}], ("outcomes", "score", "outside [0, 1]")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "a", "score": -1.0}], ("outcomes", "score", "outside [0, 1]")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "a", "score": math.nan}], ("outcomes", "score", "NaN")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "a", "score": None}], ("outcomes", "score", "null")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "a", "score": 1.0, "cost_usd": -0.5}], ("outcomes", "cost_usd", "negative")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "a", "score": 1.0, "output_tokens": -3}], ("outcomes", "output_tokens", "negative")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "zz", "model": "a", "score": 1.0}], ("outcomes", "query_id", "not in queries")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "gpt-9", "score": 1.0}], ("outcomes", "model", "not in pool.yaml")),
    ([{"query_id": "q1", "text": "x"}], [{"query_id": "q1", "model": "a", "score": 1.0}, {"query_id": "q1", "model": "a", "score": 0.0}], ("outcomes", "model", "duplicate outcome")),
]


@pytest.mark.parametrize("queries,outcomes,expected", PLANTED)
def test_each_planted_fault_is_rejected_with_row_and_column(queries, outcomes, expected):
    ds = make_dataset(queries, outcomes)
    res = validate(ds)
    assert not res.ok and res.reconciles()
    kind, column, fragment = expected
    rows = res.rejects.to_pylist()
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["source"].startswith(kind) and r["column"] == column and fragment in r["reason"]
    assert r["row"] == (len(queries if kind == "queries" else outcomes) - 1)


def test_outcomes_of_a_rejected_query_are_rejected_too():
    ds = make_dataset([{"query_id": "q1", "text": ""}], [{"query_id": "q1", "model": "a", "score": 1.0}])
    res = validate(ds)
    assert [r["reason"] for r in res.rejects.to_pylist()] == [
        "text is empty or whitespace only", "its query was rejected"]
    assert res.dataset.outcomes.num_rows == 0 and res.reconciles()


def test_conform_names_file_and_column_for_wrong_type():
    t = pa.table({"query_id": ["q"], "model": ["a"], "score": ["high"], "cost_usd": [None], "output_tokens": [1]})
    with pytest.raises(DataError, match=r"outcomes.parquet: column 'score' has type string, expected double"):
        conform(t, schemas.OUTCOMES, "outcomes.parquet")


def test_conform_missing_column_and_extra_column():
    with pytest.raises(DataError, match="queries.parquet: missing column.*text"):
        conform(pa.table({"query_id": ["q"], "split": ["train"], "task": [None]}), schemas.QUERIES, "queries.parquet")
    t, warnings = conform(pa.table({"query_id": ["q"], "text": ["x"], "split": [None], "task": [None], "extra": [1]}),
                          schemas.QUERIES, "queries.parquet")
    assert t.column_names == schemas.QUERIES.names and "extra" in warnings[0]


def test_conform_widens_compatible_types():
    t = pa.table({"query_id": ["q"], "model": ["a"], "score": pa.array([1], pa.int8()),
                  "cost_usd": pa.array([0.5], pa.float32()), "output_tokens": pa.array([3], pa.int32())})
    out, _ = conform(t, schemas.OUTCOMES, "o")
    assert out.schema.field("score").type == pa.float64() and out.column("score").to_pylist() == [1.0]


@pytest.mark.parametrize("text,fragment", [
    ("models:\n- {name: a, price_in_per_mtok: -1, price_out_per_mtok: 2}\n", "models[0] (a).price_in_per_mtok: Input should be greater than or equal to 0"),
    ("models:\n- {name: a, price_out_per_mtok: 2}\n", "models[0] (a).price_in_per_mtok: required field missing"),
    ("models:\n- {name: a, price_in_per_mtok: 1, price_out_per_mtok: 2, tier: gold}\n", "models[0] (a).tier: unknown key"),
    ("models: [\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("models:\n- {name: a, price_in_per_mtok: 1, price_out_per_mtok: 2}\n- {name: a, price_in_per_mtok: 1, price_out_per_mtok: 2}\n", "listed twice"),
])
def test_pool_problems_name_model_and_field(text, fragment):
    with pytest.raises(DataError) as e:
        parse_pool(text, "pool.yaml")
    assert str(e.value).startswith("pool.yaml: ") and fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_outcome_matrix_marks_unmeasured_as_nan(small_dataset):
    import numpy as np

    from router_core.dataset import outcome_matrix

    m = outcome_matrix(small_dataset.outcomes, ["q3", "q2", "zz"], ["a", "b"])
    assert m[0, 0] == 1.0 and np.isnan(m[0, 1])  # q3 never measured on b
    assert m[1].tolist() == [0.0, 1.0] and np.isnan(m[2]).all()


def test_a_bulk_query_set_needs_only_id_and_text():
    import pyarrow as pa

    from router_core.dataset import conform
    from router_core.errors import DataError
    from router_core.schemas import QUERIES

    t = pa.table({"query_id": ["a", "b"], "text": ["x", "y"]})
    out, _ = conform(t, QUERIES, "set.parquet", optional=("split", "task"))
    assert out.column_names == QUERIES.names and out.column("split").null_count == 2
    with pytest.raises(DataError, match="set.parquet: missing column\\(s\\) split, task"):
        conform(t, QUERIES, "set.parquet")


def test_a_task_whose_test_prompts_are_of_another_kind_than_its_training_ones_is_named():
    from router_core.validation import split_shift_warnings

    few_shot, zero_shot = "Q: ... A: ...\n" * 40 + "Q: which?", "Q: which?"
    rows = ([("mmlu", "train", few_shot)] * 30 + [("mmlu", "test", zero_shot)] * 25
            + [("gsm8k", "train", "a" * 200)] * 30 + [("gsm8k", "test", "b" * 180)] * 25
            + [("math", "train", "c" * 300)] * 30 + [("math", "test", "d")] * 5)  # too few test rows to say
    q = pa.table({"task": [r[0] for r in rows], "split": [r[1] for r in rows], "text": [r[2] for r in rows]})
    (w,) = split_shift_warnings(q)
    assert w.startswith("task 'mmlu'") and "median 9 against 569 characters" in w
    assert split_shift_warnings(q.drop(["task"])) == []
