"""The bad-input corpus: each kind of broken input with its expected outcome, through the CLI.

An outcome is one of: a rejects row naming file, row, column and reason (exit 1, counts
reconcile); a one-line error naming the file and field (exit 2, no traceback); or accepted (exit 0)
where the input is odd but legal. Kinds that need a trained model or the encoder (a tampered model
folder, features of another encoder, a 1 MB text through extraction) are in
tests/integration/test_bad_input_jobs.py.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from router_core.dataset import save_dataset
from router_core.storage import Storage


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _set(ds, file: str, column: str, row: int, value, type_=None):
    path = ds / file
    t = pq.read_table(path)
    values = t.column(column).to_pylist()
    values[row] = value
    i = t.column_names.index(column)
    pq.write_table(t.set_column(i, column, pa.array(values, type_ or t.schema.field(column).type)), path)


def _retype(ds, file: str, column: str, type_):
    path = ds / file
    t = pq.read_table(path)
    i = t.column_names.index(column)
    pq.write_table(t.set_column(i, column, t.column(column).cast(type_)), path)


def _raw_text(ds, row: int, raw: bytes):  # bytes Parquet stores as a string, unchecked
    path = ds / "queries.parquet"
    t = pq.read_table(path)
    vals = [v.encode() for v in t.column("text").to_pylist()]
    vals[row] = raw
    col = pa.array(vals, pa.binary()).view(pa.string())
    pq.write_table(t.set_column(t.column_names.index("text"), "text", col), path)


def _pool(ds, text: str):
    (ds / "pool.yaml").write_text(text)


GOOD_POOL = "models:\n- {name: a, price_in_per_mtok: 1, price_out_per_mtok: 2}\n"

# kind -> (how to break the small dataset, expected)
# expected: ("reject", file, row, column, reason) | ("error", fragment) | ("accept", fragment or None)
CORPUS = {
    "null text": (lambda d: _set(d, "queries.parquet", "text", 1, None),
                  ("reject", "queries.parquet", 1, "text", "text is null")),
    "empty text": (lambda d: _set(d, "queries.parquet", "text", 1, ""),
                   ("reject", "queries.parquet", 1, "text", "text is empty or whitespace only")),
    "whitespace-only text": (lambda d: _set(d, "queries.parquet", "text", 1, " \t\n\u3000"),
                             ("reject", "queries.parquet", 1, "text", "text is empty or whitespace only")),
    "text of 1 MB": (lambda d: _set(d, "queries.parquet", "text", 1, "why? " * 210_000),
                     ("accept", None)),  # legal; extraction truncates it and flags it (integration)
    "invalid UTF-8": (lambda d: _raw_text(d, 2, b"caf\xe9 \xff\xfe"),
                      ("reject", "queries.parquet", 2, "text", "text is not valid UTF-8")),
    "control characters": (lambda d: _set(d, "queries.parquet", "text", 3, "bell\x07 esc\x1b[0m form\x0c"),
                           ("accept", None)),  # printable or not, they are text the encoder reads
    "NUL character": (lambda d: _set(d, "queries.parquet", "text", 3, "before\x00after"),
                      ("reject", "queries.parquet", 3, "text", "text contains U+0000 (NUL)")),
    "duplicate query id": (lambda d: _set(d, "queries.parquet", "query_id", 4, "q0"),
                           ("reject", "queries.parquet", 4, "query_id", "duplicate query_id (first at row 0)")),
    "missing query id": (lambda d: _set(d, "queries.parquet", "query_id", 5, None),
                         ("reject", "queries.parquet", 5, "query_id", "query_id is null or empty")),
    "wrong column type": (lambda d: _retype(d, "outcomes.parquet", "score", pa.string()),
                          ("error", "outcomes.parquet: column 'score' has type string, expected double")),
    "extra column": (lambda d: pq.write_table(pq.read_table(d / "queries.parquet").append_column(
                         "source_url", pa.array(["x"] * 8)), d / "queries.parquet"),
                     ("accept", "queries.parquet: ignoring extra column(s) source_url")),
    "missing column": (lambda d: pq.write_table(pq.read_table(d / "queries.parquet").drop_columns(["text"]),
                                                d / "queries.parquet"),
                       ("error", "queries.parquet: missing column(s) text")),
    "score NaN": (lambda d: _set(d, "outcomes.parquet", "score", 2, float("nan")),
                  ("reject", "outcomes.parquet", 2, "score", "score is null or NaN")),
    "score -1": (lambda d: _set(d, "outcomes.parquet", "score", 2, -1.0),
                 ("reject", "outcomes.parquet", 2, "score", "score -1.0 outside [0, 1]")),
    "score 2": (lambda d: _set(d, "outcomes.parquet", "score", 2, 2.0),
                ("reject", "outcomes.parquet", 2, "score", "score 2.0 outside [0, 1]")),
    "negative cost": (lambda d: _set(d, "outcomes.parquet", "cost_usd", 2, -0.5),
                      ("reject", "outcomes.parquet", 2, "cost_usd", "cost_usd -0.5 is negative or not finite")),
    "negative price": (lambda d: _pool(d, "models:\n- {name: a, price_in_per_mtok: -1, price_out_per_mtok: 2}\n"
                                          "- {name: b, price_in_per_mtok: 1, price_out_per_mtok: 2}\n"),
                       ("error", "pool.yaml: models[0] (a).price_in_per_mtok: Input should be greater than or equal to 0")),
    "missing price": (lambda d: _pool(d, "models:\n- {name: a, price_in_per_mtok: 1}\n"
                                         "- {name: b, price_in_per_mtok: 1, price_out_per_mtok: 2}\n"),
                      ("error", "pool.yaml: models[0] (a).price_out_per_mtok: required field missing")),
    "outcome of an unknown model": (lambda d: _pool(d, GOOD_POOL),
                                    ("reject", "outcomes.parquet", 1, "model", "model not in pool.yaml")),
    "outcome of an unknown query": (lambda d: _set(d, "outcomes.parquet", "query_id", 0, "q99"),
                                    ("reject", "outcomes.parquet", 0, "query_id", "query_id not in queries")),
    "zero-byte file": (lambda d: (d / "outcomes.parquet").write_bytes(b""),
                       ("error", "outcomes.parquet: not a readable Parquet file")),
    "truncated Parquet file": (lambda d: (d / "queries.parquet").write_bytes(
                                   (d / "queries.parquet").read_bytes()[:-40]),
                               ("error", "queries.parquet: not a readable Parquet file")),
    "not a Parquet file": (lambda d: (d / "queries.parquet").write_text("query_id,text\nq0,hello\n"),
                           ("error", "queries.parquet: not a readable Parquet file")),
}


@pytest.fixture
def ds(tmp_path, small_dataset):
    root = tmp_path / "ds"
    save_dataset(Storage(), str(root), small_dataset)
    return root


@pytest.mark.parametrize("kind", list(CORPUS))
def test_bad_input_kind(kind, ds, tmp_path, capsys):
    breaker, expected = CORPUS[kind]
    breaker(ds)
    rej = tmp_path / "rejects.parquet"
    code, out, err = run(capsys, "validate", str(ds), "--rejects", str(rej))
    assert "Traceback" not in out + err
    if expected[0] == "error":
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected[1] in lines[0], err
        return
    # Counts always reconcile: every input row is accepted or rejected, none dropped.
    counts = {m.group(1): tuple(map(int, m.group(2, 3, 4)))
              for m in re.finditer(r"(queries|outcomes): +(\d+) = (\d+) ok \+ (\d+) rejected", out)}
    assert set(counts) == {"queries", "outcomes"}, out
    for n_in, n_ok, n_rej in counts.values():
        assert n_in == n_ok + n_rej
    if expected[0] == "accept":
        assert code == 0, out + err
        assert counts["queries"][2] == 0 and counts["outcomes"][2] == 0
        if expected[1]:
            assert expected[1] in out + err
        return
    _, file, row, column, reason = expected
    assert code == 1
    rows = pq.read_table(rej).to_pylist()
    first = next(r for r in rows if r["source"].endswith(file))  # the faulty row (others follow from it)
    assert (first["row"], first["column"], first["reason"]) == (row, column, reason)
    assert f"{file}: row {row} " in out and f"column '{column}': {reason}" in out
    assert len(rows) == counts["queries"][2] + counts["outcomes"][2]


def test_an_empty_query_set_is_refused_in_one_line(tmp_path, capsys):
    src = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"query_id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), src)
    code, out, err = run(capsys, "extract", "--data", str(src), "--out", str(tmp_path / "f"))
    assert code == 2 and err.strip().splitlines() == [f"prefill-router extract: error: {src}: holds no rows"]


@pytest.mark.parametrize("budget", ["0", "-5"])
def test_a_budget_of_zero_or_less_is_refused(budget, tmp_path, capsys):
    code, out, err = run(capsys, "route", "--queries", str(tmp_path), "--model", str(tmp_path), "--out",
                         str(tmp_path / "r"), "--policy", "budget", "--budget-usd", budget)
    assert code == 2 and "budget_usd (--budget-usd) must be a positive number of dollars" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_config_with_an_unknown_key_is_refused(ds, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("route:\n  task_cpu: 2\n")  # a typo of task_cpus
    code, out, err = run(capsys, "validate", str(ds), "--config", str(cfg))
    assert code == 2 and err.strip().splitlines() == [f"prefill-router validate: error: {cfg}: route.task_cpu: unknown key"]


def test_the_corpus_has_at_least_twenty_kinds():
    assert len(CORPUS) + 3 >= 20  # + empty query set, budget <= 0, unknown config key
