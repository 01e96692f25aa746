"""Route throughput on precomputed features: N synthetic queries, Parquet in, Parquet out.

    python tests/bench/bench_route.py [--rows 1000000] [--members 5] [--pca 128] [--repeats 3]

Builds, under --work, a queries folder, a features folder of float16 vectors (one 576-wide column,
as the demo's SmolLM2 features) keyed by (query id, text hash) with the real settings key, and a
prefill_trunk model (random weights; speed does not depend on their values). Then, in one process:

- floor: read the queries and the model's feature column from Parquet (pyarrow), nothing else;
- predict: the ensemble's forward on those features, in memory;
- route: the whole `route` job (read, check, cache lookup, Ray prediction tasks, policy, tally,
  write), median of --repeats runs.

Prints a table of seconds and queries/s and the ratios against the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.common import format_table  # noqa: E402
from jobs.route import Policy, run_route  # noqa: E402
from router_core import schemas  # noqa: E402
from router_core.config import ExtractConfig, load_config  # noqa: E402
from router_core.encoders import resolve_encoder  # noqa: E402
from router_core.extraction import settings_identity, settings_key, text_hash  # noqa: E402
from router_core.model import Preprocessor, SharedTrunkNet  # noqa: E402
from router_core.routers import RouterInputs, TrunkRouter, save_router  # noqa: E402
from router_core.storage import Storage  # noqa: E402

TARGETS = [f"model-{k:02d}" for k in range(11)]
DIM, COLUMN, PART_ROWS = 576, "mean_16", 100_000


def build(work: Path, rows: int, members: int, pca: int, cache_dir: str) -> None:
    rng = np.random.default_rng(0)
    ecfg = ExtractConfig(layers=[16], pooling=["mean"], cache_dir=cache_dir)
    enc = resolve_encoder(ecfg.encoder, cache_dir)
    identity = settings_identity(ecfg, enc.identity, [16])
    key = settings_key(identity)
    (work / "queries").mkdir(parents=True)
    (work / "features" / "parts").mkdir(parents=True)
    for j, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        qids = [f"q{start + i:08d}" for i in range(n)]
        texts = [f"synthetic query number {start + i}" for i in range(n)]
        pq.write_table(pa.table({"query_id": qids, "text": texts}), work / "queries" / f"part-{j:03d}.parquet")
        flat = pa.array(rng.normal(size=n * DIM).astype(np.float16), pa.float16())
        t = pa.table({"query_id": qids, "text_hash": [text_hash(x) for x in texts],
                      "n_tokens": pa.array(np.full(n, 12), pa.int32()), "truncated": pa.array(np.zeros(n, bool)),
                      COLUMN: pa.FixedSizeListArray.from_arrays(flat, DIM)},
                     schema=schemas.features_schema([COLUMN], DIM))
        pq.write_table(t, work / "features" / "parts" / f"part-{j:03d}.parquet", compression="zstd")
    fman = {"kind": "prefill-features", "settings_key": key, "settings": identity,
            "encoder": {"spec": ecfg.encoder, "identity": enc.identity, "revision": None}, "columns": [COLUMN],
            "feature_dim": DIM, "feature_dtype": "float16", "key_columns": ["query_id", "text_hash"],
            "complete": True, "rows": rows}
    (work / "features" / "manifest.json").write_text(json.dumps(fman))
    x = rng.normal(size=(2000, DIM))
    pre = Preprocessor(pca_dim=pca or None).fit(x)
    nets = [SharedTrunkNet(pre.out_dim, len(TARGETS)).eval() for _ in range(members)]
    pool = {"models": [{"name": t, "price_in_per_mtok": 0.1 * (k + 1), "price_out_per_mtok": 0.3 * (k + 1)}
                       for k, t in enumerate(TARGETS)]}
    save_router(Storage(), str(work / "model" / "prefill_trunk"), TrunkRouter("prefill_trunk", [COLUMN], pre, nets),
                {"targets": TARGETS, "features_settings_key": key, "encoder": fman["encoder"]})
    (work / "model" / "manifest.json").write_text(json.dumps({
        "kind": "prefill-router-models", "default": "prefill_trunk", "routers": {"prefill_trunk": "prefill_trunk"},
        "targets": TARGETS, "pool": pool, "best_single": TARGETS[-1],
        "output_tokens_median": {t: 200.0 for t in TARGETS},
        "features": {"prefill": {"uri": str(work / "features"), "settings_key": key, "encoder": fman["encoder"]}}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--members", type=int, default=5, help="ensemble members (the default keeps 5)")
    ap.add_argument("--pca", type=int, default=128, help="PCA size (0 = none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", help="folder for the synthetic inputs (default: a temporary one)")
    a = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-route-"))
    cache = str(Path(__file__).resolve().parents[2] / ".cache" / "encoders-for-tests")
    t = time.perf_counter()
    if not (work / "model" / "manifest.json").exists():
        build(work, a.rows, a.members, a.pca, cache)
    print(f"inputs: {a.rows} queries, features {COLUMN} ({DIM} x float16), ensemble of {a.members}, "
          f"PCA {a.pca or 'off'} under {work} ({time.perf_counter() - t:.0f} s to build)", flush=True)

    floor = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        q = pq.read_table(work / "queries")
        f = pq.read_table(work / "features" / "parts", columns=["query_id", "text_hash", COLUMN])
        floor.append(time.perf_counter() - t)
    x = f.column(COLUMN).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, DIM).astype(np.float32)
    from router_core.routers import load_router

    router, _ = load_router(Storage(), str(work / "model" / "prefill_trunk"))
    pred = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        router.predict_proba(RouterInputs(n=len(x), prefill={COLUMN: x}))
        pred.append(time.perf_counter() - t)
    del x, f, q

    cfg = load_config(None, ["ray.num_cpus=2", f"extract.cache_dir={cache}"])
    runs, stages = [], []
    for i in range(a.repeats):
        t = time.perf_counter()
        r = run_route(cfg, str(work / "queries"), str(work / "model"), str(work / "routes"), Policy())
        runs.append(time.perf_counter() - t)
        stages.append(r.seconds)
        assert r.routed == a.rows and r.rejected == 0
    med = statistics.median
    fl, pr, ro = med(floor), med(pred), med(runs)
    rows = [["floor: read queries + features (pyarrow)", fl, a.rows / fl, 1.0],
            ["predict only (in memory)", pr, a.rows / pr, pr / fl],
            ["route job, Parquet -> Parquet", ro, a.rows / ro, ro / fl]]
    for k in ("read", "extract", "predict", "assign", "write"):
        s = med([st[k] for st in stages])
        rows.append([f"  route stage: {k}", s, a.rows / s if s else float("inf"), s / fl])
    print(format_table(["step (median of %d)" % a.repeats, "seconds", "queries/s", "x floor"], rows))


if __name__ == "__main__":
    main()
