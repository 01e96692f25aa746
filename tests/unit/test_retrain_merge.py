"""retrain's merge of new labelled outcomes: the first model needs none (day 0 trains on
retrain.data alone); a later run with nothing new says so and names the folder."""

import pyarrow as pa
import pytest

from router_core.labels import merge_new
from router_core.dataset import Dataset
from router_core.errors import DataError
from router_core.schemas import OUTCOMES, QUERIES, Pool
from router_core.storage import Storage


def _base() -> Dataset:
    q = pa.table({"query_id": ["a", "b"], "text": ["one", "two"], "split": ["train", "test"], "task": [None, None]},
                 schema=QUERIES)
    o = pa.table({"query_id": ["a", "b"], "model": ["m", "m"], "score": [1.0, 0.0], "cost_usd": [None, None],
                  "output_tokens": [10, 10]}, schema=OUTCOMES)
    return Dataset(q, o, Pool.model_validate({"models": [{"name": "m", "price_in_per_mtok": 1, "price_out_per_mtok": 2}]}))


def test_day_0_merges_nothing_and_a_later_run_with_nothing_new_is_an_error(tmp_path):
    base = _base()
    merged, rejects, counts = merge_new(Storage(), base, str(tmp_path / "labels"), none_ok=True)
    assert merged is base and rejects == [] and counts == {"batches": 0, "new_queries": 0, "new_outcomes": 0, "batch_names": [],
                                                           "new_models": []}
    with pytest.raises(DataError, match="labels: no batch folder with outcomes.parquet"):
        merge_new(Storage(), base, str(tmp_path / "labels"))
