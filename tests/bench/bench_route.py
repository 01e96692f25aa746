"""Route throughput on precomputed features: N synthetic queries, Parquet in, Parquet out.

    python tests/bench/bench_route.py [--rows 1000000] [--members 5] [--pca 128] [--student 128] [--repeats 3]

Builds, under --work, a queries folder, a features folder of float16 vectors (one 576-wide column,
as the demo's SmolLM2 features, written by the extraction job's writer) keyed by (query id, text
hash) with the real settings key, and a model with two routers (random weights; speed does not
depend on their values): prefill_trunk, an ensemble of --members nets (256, 128) on PCA --pca, and
prefill_trunk_distilled, one net of width --student on the same PCA (what `route` serves). Then,
in one process:

- floor: read the queries and the model's feature column from Parquet (pyarrow), nothing else;
- predict: each router's forward on those features, in memory (the pre-fused path, then the
  serving path);
- route: the whole `route` job (read, check, cache lookup, Ray prediction tasks, policy, tally,
  write) with the served router, median of --repeats runs; then once with the ensemble.

Prints a table of seconds and queries/s and the ratios against the floor.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from jobs.route import run_route  # noqa: E402
from jobs.runtime import ensure_ray  # noqa: E402
from router_core import schemas  # noqa: E402
from router_core.config import ExtractConfig, Policy, load_config  # noqa: E402
from router_core.encoders import encoder_fingerprint, resolve_encoder  # noqa: E402
from router_core.extraction import settings_identity, settings_key, text_hash  # noqa: E402
from router_core.features import part_digests, request_of, write_part  # noqa: E402
from router_core.model_index import FeatureRef, ModelIndex  # noqa: E402
from router_core.model import Preprocessor, SharedTrunkNet, ensemble_proba, predict_logits  # noqa: E402
from router_core.routers import RouterInputs, TrunkRouter, load_router, save_router  # noqa: E402
from router_core.storage import Storage  # noqa: E402

TARGETS = [f"model-{k:02d}" for k in range(11)]
DIM, COLUMN, PART_ROWS = 576, "mean_16", 100_000


def build(work: Path, rows: int, members: int, pca: int, student: int, cache_dir: str) -> None:
    rng = np.random.default_rng(0)
    ecfg = ExtractConfig(layers=[16], pooling=["mean"], cache_dir=cache_dir, dtype="float32")  # synthetic features
    enc = resolve_encoder(ecfg.encoder, cache_dir)
    identity = settings_identity(ecfg, enc.identity, [16])
    key = settings_key(identity)
    (work / "queries").mkdir(parents=True)
    (work / "features" / "parts").mkdir(parents=True)
    parts = {}
    for j, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        qids = [f"q{start + i:08d}" for i in range(n)]
        texts = [f"synthetic query number {start + i}" for i in range(n)]
        pq.write_table(pa.table({"query_id": qids, "text": texts}), work / "queries" / f"part-{j:03d}.parquet")
        t = pa.table({"query_id": qids, "text_hash": [text_hash(x) for x in texts],
                      "n_tokens": pa.array(np.full(n, 12), pa.int32()), "truncated": pa.array(np.zeros(n, bool)),
                      COLUMN: schemas.encode_vectors(rng.normal(size=(n, DIM)).astype(np.float16))},
                     schema=schemas.features_schema([COLUMN], DIM))
        (work / "features" / "parts" / f"part-{j:03d}.parquet").write_bytes(write_part(t))
        parts[f"part-{j:03d}.parquet"] = {"rows": n, "sha256": part_digests(t)}
    fman = {"kind": "prefill-features", "settings_key": key, "settings": identity,
            "encoder": {"spec": ecfg.encoder, "identity": enc.identity, "revision": None,
                        "fingerprint": encoder_fingerprint(ecfg.encoder)}, "request": request_of(ecfg), "columns": [COLUMN],
            "feature_dim": DIM, "feature_dtype": "float16", "key_columns": ["query_id", "text_hash"],
            "complete": True, "rows": rows, "parts": parts}
    (work / "features" / "manifest.json").write_text(json.dumps(fman))
    x = rng.normal(size=(2000, DIM))
    pre = Preprocessor(pca_dim=pca or None).fit(x)
    pool = {"models": [{"name": t, "price_in_per_mtok": 0.1 * (k + 1), "price_out_per_mtok": 0.3 * (k + 1)}
                       for k, t in enumerate(TARGETS)]}
    meta = {"targets": TARGETS, "features_settings_key": key, "encoder": fman["encoder"]}
    ens = TrunkRouter("prefill_trunk", [COLUMN]).fit(pre, [SharedTrunkNet(pre.out_dim, len(TARGETS)).eval()
                                                          for _ in range(members)])
    dist = TrunkRouter("prefill_trunk_distilled", [COLUMN]).fit(
        pre, [SharedTrunkNet(pre.out_dim, len(TARGETS), (student,), (0.0,)).eval()])
    for r in (ens, dist):
        save_router(Storage(), str(work / "model" / r.kind), r, meta)
    ModelIndex(default="prefill_trunk", serve="prefill_trunk_distilled",
               routers={"prefill_trunk": "prefill_trunk", "prefill_trunk_distilled": "prefill_trunk_distilled"},
               targets=TARGETS, pool=pool, best_single=TARGETS[-1], output_tokens_median={t: 200.0 for t in TARGETS},
               features={"prefill": FeatureRef(uri=str(work / "features"), settings_key=key, encoder=fman["encoder"])},
               data_fingerprint="synthetic", n_train=0, n_val=0, code_version="bench").save(Storage(), str(work / "model"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--members", type=int, default=5, help="ensemble members (the default keeps 5)")
    ap.add_argument("--pca", type=int, default=128, help="PCA size (0 = none)")
    ap.add_argument("--student", type=int, default=128, help="width of the distilled net (train.distil_width)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", help="folder for the synthetic inputs (default: a temporary one)")
    ap.add_argument("--route-only", action="store_true", help="skip the in-memory predictions and the ensemble's route")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-route-"))
    cache = str(Path(__file__).resolve().parents[2] / ".cache" / "encoders-for-tests")
    t = time.perf_counter()
    if not (work / "model" / "manifest.json").exists():
        build(work, a.rows, a.members, a.pca, a.student, cache)
    print(f"inputs: {a.rows} queries, features {COLUMN} ({DIM} x float16), ensemble of {a.members} on "
          f"PCA {a.pca or 'off'}, student of width {a.student}, under {work} ({time.perf_counter() - t:.0f} s to build)",
          flush=True)
    med = statistics.median

    def timed(fn, repeats=a.repeats):
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return med(out)

    def read():
        pq.read_table(work / "queries")
        return pq.read_table(work / "features" / "parts", columns=["query_id", "text_hash", COLUMN])

    fl = timed(read)
    x = schemas.decode_vectors(read().column(COLUMN), DIM)
    inputs = RouterInputs(n=len(x), prefill={COLUMN: x})
    table = [["floor: read queries + features (pyarrow)", fl, a.rows / fl, 1.0]]
    for name in () if a.route_only else ("prefill_trunk", "prefill_trunk_distilled"):
        router, _ = load_router(Storage(), str(work / "model" / name))
        plain = timed(lambda: ensemble_proba(predict_logits(router.nets_, router.pre_.transform(x))), 1)
        fused = timed(lambda: router.predict_proba(inputs))
        table += [[f"predict {name}: preprocess, then nets (in memory)", plain, a.rows / plain, plain / fl],
                  [f"predict {name}: fused (in memory)", fused, a.rows / fused, fused / fl]]
    del x, inputs

    cfg = load_config(None, ["ray.num_cpus=2", f"extract.cache_dir={cache}"])
    ensure_ray(cfg)  # started once, outside the timings (a job on a running cluster finds it up)
    for name, repeats in (("prefill_trunk_distilled", a.repeats), ("prefill_trunk", 0 if a.route_only else 1)):
        if not repeats:
            continue
        shutil.rmtree(work / f"routes-{name}", ignore_errors=True)  # an earlier bench's run owns it
        runs, stages = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            r = run_route(cfg, str(work / "queries"), str(work / "model"), str(work / f"routes-{name}"), Policy(),
                          router_name=name)
            runs.append(time.perf_counter() - t)
            stages.append(r.seconds)
            assert r.routed == a.rows and r.rejected == 0
        ro = med(runs)
        table.append([f"route job ({name}), Parquet -> Parquet", ro, a.rows / ro, ro / fl])
        for k in ("read", "extract", "predict", "assign", "write"):
            s = med([st[k] for st in stages])
            table.append([f"  stage: {k}", s, a.rows / s if s else float("inf"), s / fl])
    print(format_table([f"step (median of {a.repeats}; ensemble route and unfused: 1 run)", "seconds", "queries/s",
                        "x floor"], table))


if __name__ == "__main__":
    main()
