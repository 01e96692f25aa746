"""The command line on local files: exit codes, one-line errors, reconciled counts."""

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import cli
from jobs.cli import main
from jobs.submit import exit_code
from router_core.errors import REJECTED_LINE
from router_core.dataset import save_dataset
from router_core.storage import Storage


@pytest.fixture
def dataset_dir(tmp_path, small_dataset):
    root = tmp_path / "ds"
    save_dataset(Storage(), str(root), small_dataset)
    return root


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_clean_dataset(capsys, dataset_dir):
    code, out, err = run(capsys, "validate", str(dataset_dir))
    assert code == 0 and "OK" in out and "queries:  8 = 8 ok + 0 rejected" in out


def test_validate_reports_bad_rows_and_writes_rejects(capsys, dataset_dir, tmp_path):
    t = pq.read_table(dataset_dir / "outcomes.parquet")
    scores = t.column("score").to_pylist()
    scores[2] = 7.0
    pq.write_table(t.set_column(2, "score", pa.array(scores)), dataset_dir / "outcomes.parquet")
    rej = tmp_path / "rej.parquet"
    code, out, err = run(capsys, "validate", str(dataset_dir), "--rejects", str(rej))
    assert code == 1 and err.rstrip().endswith("prefill-router validate: " + REJECTED_LINE)  # what submit reads
    assert "outcomes.parquet: row 2 (query_id 'q1') model 'a' column 'score': score 7.0 outside [0, 1]" in out
    assert "outcomes: 15 = 14 ok + 1 rejected" in out
    assert pq.read_table(rej).num_rows == 1


@pytest.mark.parametrize("fault,message", [
    ("wrong_type", "outcomes.parquet: column 'score' has type string, expected double"),
    ("missing_column", "queries.parquet: missing column(s) text"),
    ("not_parquet", "queries.parquet: not a readable Parquet file"),
    ("empty_file", "queries.parquet: not a readable Parquet file"),
    ("bad_pool", "pool.yaml: models[0] (a).price_out_per_mtok: Input should be greater than or equal to 0"),
    ("no_pool", "pool.yaml: file not found"),
])
def test_structural_faults_exit_2_with_one_line(capsys, dataset_dir, fault, message):
    if fault == "wrong_type":
        t = pq.read_table(dataset_dir / "outcomes.parquet")
        pq.write_table(t.set_column(2, "score", pa.array([str(x) for x in t.column("score").to_pylist()])),
                       dataset_dir / "outcomes.parquet")
    elif fault == "missing_column":
        pq.write_table(pq.read_table(dataset_dir / "queries.parquet").drop_columns(["text"]),
                       dataset_dir / "queries.parquet")
    elif fault == "not_parquet":
        (dataset_dir / "queries.parquet").write_bytes(b"query_id,text\nq1,hello\n")
    elif fault == "empty_file":
        (dataset_dir / "queries.parquet").write_bytes(b"")
    elif fault == "bad_pool":
        (dataset_dir / "pool.yaml").write_text(
            "models:\n- {name: a, price_in_per_mtok: 1, price_out_per_mtok: -2}\n"
            "- {name: b, price_in_per_mtok: 1, price_out_per_mtok: 2}\n")
    elif fault == "no_pool":
        (dataset_dir / "pool.yaml").unlink()
    code, out, err = run(capsys, "validate", str(dataset_dir))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_config_with_unknown_key_exits_2(capsys, dataset_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("storage:\n  bucket: x\n")
    code, out, err = run(capsys, "validate", str(dataset_dir), "--config", str(cfg))
    assert code == 2 and "storage.bucket: unknown key" in err


def test_import_writes_rejects_and_counts_reconcile(capsys, tmp_path):
    src = tmp_path / "rb.csv"
    src.write_text(
        "sample_id,prompt,eval_name,m1,m2,m1|total_cost,m2|total_cost,split\n"
        "a,Q1,arc,1.0,0.0,0.001,0.01,train\n"
        "b,,arc,1.0,0.0,0.001,0.01,train\n"
        "c,Q3,arc,,2.0,0.002,0.02,test\n"
        "d,Q4,arc,yes,1,0.002,0.02,test\n")
    pool = tmp_path / "pool.yaml"
    pool.write_text("models:\n- {name: m1, price_in_per_mtok: 1, price_out_per_mtok: 2}\n"
                    "- {name: m2, price_in_per_mtok: 5, price_out_per_mtok: 9}\n")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "import", "routerbench", str(src), "--out", str(out_dir), "--pool", str(pool))
    assert code == 1  # rows were rejected (and listed); the rest is imported
    assert "4 source rows -> 3 queries + 1 rejected" in out
    assert "8 model cells = 6 outcomes + 1 blank (not measured) + 1 unconvertible" in out
    reasons = sorted(r["reason"] for r in pq.read_table(out_dir / "rejects.parquet").to_pylist())
    assert reasons == ["its query was rejected", "its query was rejected", "score 'yes' is not a number",
                       "score 2.0 outside [0, 1]", "text is empty or whitespace only"]
    assert pq.read_table(out_dir / "outcomes.parquet").num_rows == 3
    code, out, err = run(capsys, "validate", str(out_dir))
    assert code == 0


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("import", "validate", "extract"):
        assert cmd in out


def test_a_crash_exits_3_with_its_traceback_and_submit_passes_each_code_through(capsys, monkeypatch, dataset_dir):
    def boom(cfg, args):
        raise RuntimeError("a bug, not the input")

    i = next(i for i, s in enumerate(cli.STAGES) if s.name == "validate")
    stages = list(cli.STAGES)
    stages[i] = dataclasses.replace(stages[i], run=boom)
    monkeypatch.setattr(cli, "STAGES", stages)
    code, out, err = run(capsys, "validate", str(dataset_dir))
    assert code == 3 and "Traceback" in err and err.rstrip().endswith("prefill-router validate: crashed (exit 3)")
    # submit: the job's own code; a bare exit 1 (a crashed interpreter) is a failure, not rejected rows.
    assert exit_code("SUCCEEDED", 0, "") == 0 and exit_code("STOPPED", None, "") == 130
    assert exit_code("FAILED", 1, "... prefill-router nightly: " + REJECTED_LINE + "\n") == 1
    assert exit_code("FAILED", 1, "Traceback (most recent call last): ...") == 3
    assert exit_code("FAILED", 2, "") == 2 and exit_code("FAILED", 3, "") == 3 and exit_code("FAILED", None, "") == 3


def test_version_and_every_commands_help_ends_with_examples_that_parse_and_the_exit_codes(capsys):
    import shlex

    import router_core
    from jobs import cli_args

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"prefill-router {router_core.__version__}")
    parser = cli.build_parser()
    for stage in cli.STAGES:
        with pytest.raises(SystemExit):
            main([stage.name, "--help"])
        text = capsys.readouterr().out
        assert "examples:\n  prefill-router " + stage.name in text and text.rstrip().endswith("130 interrupted")
        for example in cli_args.EXAMPLES[stage.name]:
            parser.parse_args(shlex.split(example.split("   (")[0])[1:])  # exits on an unknown flag


def test_an_encoder_the_hub_cannot_give_is_one_line_naming_it_and_the_ways_out(monkeypatch):
    import huggingface_hub.constants

    from jobs.encoding import encoder_shape
    from router_core.config import ExtractConfig
    from router_core.errors import ArtifactError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # at once, as on a machine without the Hub
    with pytest.raises(ArtifactError) as e:
        encoder_shape("prefill-router-tests/no-such-encoder", ExtractConfig())
    msg = str(e.value)
    assert msg.startswith("encoder prefill-router-tests/no-such-encoder: its config could not be loaded (")
    assert "\n" not in msg and "smollm2-135m" in msg and "a local model folder" in msg
