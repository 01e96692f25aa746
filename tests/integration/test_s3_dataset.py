"""Datasets on a real S3-compatible server: the same code path as local folders."""

import pyarrow.parquet as pq

from jobs.cli import main
from router_core.dataset import load_dataset
from router_core.storage import Storage
from tests.conftest import shared_file


def test_import_routerbench_to_s3_and_read_back_identical(capsys, s3_server, bucket, tmp_path):
    src = shared_file("routerbench-subset/routerbench_wide.csv")
    local = tmp_path / "rb"
    assert main(["import", "routerbench", str(src), "--out", str(local)]) == 0
    remote = f"s3://{bucket}/datasets/rb"
    assert main(["import", "routerbench", str(src), "--out", remote]) == 0
    out = capsys.readouterr().out
    assert "3178 source rows -> 3178 queries + 0 rejected" in out
    assert "splits:   train 2225 / test 953" in out

    st = Storage(endpoint_url=s3_server)
    a, b = load_dataset(Storage(), str(local)), load_dataset(st, remote)
    assert a.queries.equals(b.queries) and a.outcomes.equals(b.outcomes) and a.pool == b.pool
    assert b.queries.num_rows == 3178 and len(b.outcomes.column("model").unique()) == 11
    # The object on S3 is the same Parquet as the local file.
    assert pq.read_table(local / "queries.parquet").equals(st.read_table(remote + "/queries.parquet"))

    assert main(["validate", remote]) == 0
    assert "queries:  3178 = 3178 ok + 0 rejected" in capsys.readouterr().out


def test_validate_missing_s3_dataset_is_one_line(capsys, s3_server, bucket):
    assert main(["validate", f"s3://{bucket}/nothing-here"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset folder not found" in err[0]


def test_ray_data_reads_the_dataset_from_s3(ray_local, s3_server, bucket, small_dataset):
    import ray

    from router_core.dataset import save_dataset

    st = Storage(endpoint_url=s3_server)
    save_dataset(st, f"s3://{bucket}/small", small_dataset)
    fs, path = st.resolve(f"s3://{bucket}/small/queries.parquet")
    ds = ray.data.read_parquet(path, filesystem=fs)
    rows = sorted(ds.take_all(), key=lambda r: r["query_id"])
    assert [r["query_id"] for r in rows] == sorted(small_dataset.queries.column("query_id").to_pylist())
