import os

import pyarrow as pa
import pytest

from router_core.errors import DataError
from router_core.storage import Storage, join


def test_local_table_round_trip_and_atomic_write(tmp_path):
    st = Storage()
    t = pa.table({"x": [1, 2, 3], "s": ["a", None, "c"]})
    uri = join(str(tmp_path), "deep", "t.parquet")
    st.write_table(t, uri)
    assert st.read_table(uri).equals(t)
    assert os.listdir(tmp_path / "deep") == ["t.parquet"]  # no temp file left behind


def test_folder_of_parts_reads_as_one_table(tmp_path):
    st = Storage()
    for i in range(3):
        st.write_table(pa.table({"x": [i]}), join(str(tmp_path), "parts", f"part-{i}.parquet"))
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    assert st.read_table(join(str(tmp_path), "parts")).column("x").to_pylist() == [0, 1, 2]


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    st = Storage()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file"):
        st.read_table(str(bad))
    with pytest.raises(DataError, match=r"nope.parquet: not found"):
        st.read_table(str(tmp_path / "nope.parquet"))
    with pytest.raises(DataError, match="unsupported scheme"):
        st.read_table("gs://bucket/x")


def test_s3_uri_resolution_uses_config_endpoint():
    fs, path = Storage(endpoint_url="http://127.0.0.1:1").resolve("s3://bucket/a/b/")
    assert path == "bucket/a/b" and fs.type_name == "s3"


def test_join_refuses_to_climb_out_of_its_prefix():
    from router_core.errors import DataError
    from router_core.storage import join

    assert join("s3://b/out", "2026-11-28", "set-a") == "s3://b/out/2026-11-28/set-a"
    for bad in ("..", "../x", "a/../../etc", "x/.."):
        with pytest.raises(DataError, match="not allowed"):
            join("s3://b/out", bad)
