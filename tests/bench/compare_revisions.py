"""Throughput of this checkout against an earlier revision, interleaved in one run (not a test).

    python tests/bench/compare_revisions.py --base cf96524 [--n 120] [--rows 200000] [--repeats 3]

A refactor must not make the job slower; this says whether it did. The base revision is
unpacked (`git archive`) into a temporary folder; then, --repeats times, alternating which side
goes first, each side runs in a fresh Python process of its own code:

- extraction, float32, prefix sharing on, on the same --n RouterBench prompts: the core in one
  process (`Encoder.extract`) and the Ray job end to end (`run_extract`, one local Ray);
- route: that revision's own `tests/bench/bench_route.py --route-only --repeats 1` on --rows
  synthetic queries (inputs built once per side, outside the timings).

Prints medians per side and the ratio new/base, with every run's figure so the noise is visible.
Both sides use the same venv; a base that needs other packages is out of scope.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from jobs.common import format_table  # noqa: E402

# Runs inside each side's own code (cwd and sys.path = that side's root). Uses only the API both
# revisions share: ExtractConfig, resolve_encoder, Encoder.extract, AppConfig, run_extract.
EXTRACT_CHILD = r"""
import csv, json, os, sys, tempfile, time
import numpy as np, pyarrow as pa
root, n, data, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, root)
from router_core.config import AppConfig, ExtractConfig
from router_core.encoders import resolve_encoder
from router_core.extraction import Encoder
from router_core.storage import Storage
from jobs.extract import run_extract
csv.field_size_limit(2**31 - 1)
with open(os.path.join(data, "routerbench-subset", "routerbench_wide.csv"), newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
idx = np.random.default_rng(0).choice(len(rows), size=min(n, len(rows)), replace=False)
texts = [rows[i]["prompt"] for i in idx]
ecfg = ExtractConfig(cache_dir=cache, dtype="float32")
enc = Encoder(ecfg, resolve_encoder(ecfg.encoder, cache).path)
res = enc.extract(texts)
core = res.stats.tokens / res.stats.seconds
del enc
import ray
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
         configure_logging=False, log_to_driver=False)
cfg = AppConfig.model_validate({"extract": {"cache_dir": cache, "dtype": "float32",
                                            "torch_threads": os.cpu_count(), "rows_per_task": 512}})
with tempfile.TemporaryDirectory() as work:
    src = os.path.join(work, "q.parquet")
    Storage().write_table(pa.table({"query_id": [f"q{i}" for i in range(len(texts))], "text": texts,
                                    "split": [None] * len(texts), "task": [None] * len(texts)}), src)
    t = time.perf_counter()
    run = run_extract(cfg, src, os.path.join(work, "feats"))
    job = run.stats.tokens / (time.perf_counter() - t)
ray.shutdown()
print("RESULT " + json.dumps({"core_tok_s": core, "job_tok_s": job, "tokens": res.stats.tokens}))
"""

ROUTE_LINE = re.compile(r"route job \(prefill_trunk_distilled\), Parquet -> Parquet\s+([0-9.]+)")


def unpack(rev: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as t:
        t.extractall(into / "tree", filter="data")
    return into / "tree"


def snapshot(into: Path) -> Path:
    """The working tree as it is now (tracked and untracked, not ignored files): edits made while the
    benchmark runs do not leak into it."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"], check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src, dst = REPO / f, into / "tree" / f
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return into / "tree"


def child(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(cwd), PYTHONUNBUFFERED="1")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} in {cwd} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def extract_once(root: Path, n: int, data: str, cache: str) -> dict:
    out = child([sys.executable, "-c", EXTRACT_CHILD, str(root), str(n), data, cache], root)
    return json.loads(out.split("RESULT ", 1)[1])


def route_once(root: Path, rows: int, work: Path) -> float:
    out = child([sys.executable, str(root / "tests" / "bench" / "bench_route.py"), "--rows", str(rows),
                 "--route-only", "--repeats", "1", "--work", str(work)], root)
    m = ROUTE_LINE.search(out)
    if not m:
        raise SystemExit(f"no route line in {root}'s bench_route output:\n{out[-2000:]}")
    return rows / float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare against (e.g. cf96524)")
    ap.add_argument("--new", help="git revision on the other side (default: this working tree, copied at the start)")
    ap.add_argument("--n", type=int, default=120, help="RouterBench prompts for extraction (default 120)")
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic queries for route (default 200,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--skip", choices=["extract", "route"], help="leave one half out")
    ap.add_argument("--out", default=str(REPO / "out" / "bench" / "compare.json"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    sides = {"base": unpack(a.base, tmp / "base"), "new": unpack(a.new, tmp / "new") if a.new else snapshot(tmp / "new")}
    cache = str(tmp / "encoders")  # one converted encoder for both sides: same files, same work
    runs: dict[str, dict[str, list[float]]] = {s: {"core": [], "job": [], "route": []} for s in sides}
    for rep in range(a.repeats):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for side in order:
            root = sides[side]
            if a.skip != "extract":
                r = extract_once(root, a.n, a.data, cache)
                runs[side]["core"].append(r["core_tok_s"])
                runs[side]["job"].append(r["job_tok_s"])
            if a.skip != "route":
                runs[side]["route"].append(route_once(root, a.rows, tmp / f"route-{side}"))
            print(f"  repeat {rep + 1}/{a.repeats} {side}: " + ", ".join(
                f"{k} {v[-1]:.0f}" for k, v in runs[side].items() if v), flush=True)
    med = statistics.median
    labels = {"core": f"extract, core in one process (query tok/s, {a.n} prompts, fp32)",
              "job": "extract, Ray job end to end (query tok/s)",
              "route": f"route job, {a.rows} queries (queries/s)"}
    table = []
    for k, label in labels.items():
        if not runs["new"][k]:
            continue
        b, n = med(runs["base"][k]), med(runs["new"][k])
        table.append([label, f"{b:.0f}", f"{n:.0f}", f"{n / b:.2f}x",
                      " ".join(f"{x:.0f}" for x in runs["base"][k]), " ".join(f"{x:.0f}" for x in runs["new"][k])])
    print()
    print(format_table(["measure", f"base {a.base}", a.new or "this checkout", "new/base", "base runs", "new runs"], table))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"base": a.base, "new": a.new or "working tree", "n": a.n, "rows": a.rows, "runs": runs}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
