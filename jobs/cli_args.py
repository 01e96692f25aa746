"""The arguments of each subcommand (jobs.cli's table of stages names them)."""

from __future__ import annotations

import argparse


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="configuration file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set storage.region=eu-west-1 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def learning_inputs(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments of the stages that learn from a dataset and its features."""
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--features", required=True, help="features folder made by extract")
    p.add_argument("--out", required=True, help=out_help)


def import_args(p):
    p.add_argument("format", choices=["routerbench", "llmrouter", "routellm"],
                   help="routerbench: routerbench_wide.csv; llmrouter: scores_wide.csv (prices from "
                   "llm_candidates.json beside it); routellm: mmlu_gsm8k_wide.csv (split by seeded "
                   "hash of the query id: --set import.seed=N)")
    p.add_argument("src", help="source file (local path or s3:// URI)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--pool", help="pool.yaml with prices to use instead of the source's or estimated ones")
    p.add_argument("--candidates", help="llmrouter only: path of llm_candidates.json")


def validate_args(p):
    p.add_argument("dataset", help="dataset folder (local path or s3:// URI)")
    p.add_argument("--rejects", help="write every rejected row to this Parquet file")


def extract_args(p):
    p.add_argument("--data", required=True, help="dataset folder, queries Parquet file, or folder of parts")
    p.add_argument("--out", required=True, help="features folder (local or s3://)")
    p.add_argument("--encoder", help="smollm2-135m (packaged), a local model folder, or a HF id")
    p.add_argument("--layers", help="comma-separated hidden-state indices (0 = embeddings), or 'all'")
    p.add_argument("--pooling", help="comma-separated: mean (all tokens), last (last token), tail (last extract.tail_tokens)")


def evaluate_args(p):
    p.add_argument("--data", required=True, help="dataset folder (local or s3://)")
    p.add_argument("--features", required=True, help="prefill features folder made by `extract`")
    p.add_argument("--model", required=True, help="model folder made by `train` (or a retrain folder: its champion)")
    p.add_argument("--out", required=True, help="report folder")


def onboard_args(p):
    p.add_argument("--data", required=True, help="the dataset the model was trained on (local or s3://)")
    p.add_argument("--features", required=True, help="its prefill features folder made by `extract`")
    p.add_argument("--model", required=True, help="model folder made by `train` (or a retrain folder: its champion)")
    p.add_argument("--new", required=True, help="folder with the new target's outcomes.parquet (canonical schema, one "
                   "model) and pool.yaml with its prices")
    p.add_argument("--out", required=True, help="folder for dataset/, model/, report/, decision.json and rejects")


def route_args(p):
    p.add_argument("--queries", required=True, help="queries: Parquet file, folder/prefix of parts, or dataset folder")
    p.add_argument("--model", required=True, help="model folder made by `train` (or a retrain folder: its champion)")
    p.add_argument("--out", required=True, help="routes folder (one run per folder)")
    p.add_argument("--policy", choices=["threshold", "utility", "budget"], default="threshold")
    p.add_argument("--tau", type=float, help="threshold policy: 0 = most probable, 1 = cheapest (default: the model's "
                   "operating point, the cheapest whose validation accuracy matches the best single model's)")
    p.add_argument("--lam", type=float, default=0.0, help="utility policy: accuracy per dollar traded")
    p.add_argument("--budget-usd", type=float, help="budget policy: total dollars for the batch (> 0)")
    p.add_argument("--features", help="feature cache folder (default: the model's training features)")
    p.add_argument("--run-id", help="name this run (default: a digest of queries, router and policy)")
    p.add_argument("--router", help="which router under MODEL (default: the model index's serving router)")


def submit_args(p, stages: list[str]):
    p.add_argument("stage", help="the stage to run: " + ", ".join(stages))
    p.add_argument("stage_args", nargs=argparse.REMAINDER, help="the stage's arguments (after --)")
    p.add_argument("--address", required=True, help="the Jobs API, e.g. http://HEAD:8265")
    p.add_argument("--working-dir", help="folder to upload (default: this checkout)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable to the job (credentials are refused)")
    p.add_argument("--python", default="python", help="the cluster's Python (default: python)")
    p.add_argument("--no-follow", action="store_true", help="print the job id and return")
    p.add_argument("--timeout", type=float, help="stop the job after this many seconds")


def nightly_args(p):
    p.add_argument("--date", help="the date of the outputs (default: today, UTC), YYYY-MM-DD")


def none(p):
    pass


def status_args(p):
    p.add_argument("models", nargs="?", help="the retrain folder (default: retrain.models)")
    p.add_argument("--nightly", help="nightly.output folder or its watermark (default: the config's)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")


EXIT_CODES = ("exit codes: 0 done; 1 done, with rejected rows (listed in the rejects table);\n"
              "  2 bad input or configuration (one line naming the file, row or field);\n"
              "  3 could not finish (storage, training, a crash); 130 interrupted")
EXAMPLES = {
    "import": ["prefill-router import routerbench examples/routerbench/routerbench_compact.csv.gz --out out/rb/data"],
    "validate": ["prefill-router validate out/rb/data --rejects out/rb/rejects.parquet"],
    "extract": ["prefill-router extract --config configs/demo.yaml --data out/rb/data --out out/rb/features"],
    "select-layers": ["prefill-router select-layers --config configs/demo.yaml --data out/rb/data "
                      "--features out/rb/features --out out/rb/layers"],
    "train": ["prefill-router train --config configs/demo.yaml --data out/rb/data --features out/rb/features "
              "--out out/rb/model"],
    "evaluate": ["prefill-router evaluate --config configs/demo.yaml --data out/rb/data --features out/rb/features "
                 "--model out/rb/model --out out/rb/report"],
    "route": ["prefill-router route --queries out/demo/test_queries.parquet --model out/demo/model --out out/rb/routes",
              "prefill-router route --queries q.parquet --model out/demo/model --out out/rb/routes-5usd "
              "--policy budget --budget-usd 5"],
    "onboard": ["prefill-router onboard --data out/demo/data --features out/demo/features --model out/demo/model "
                "--new labels/newcomer --out out/onboard"],
    "submit": ["prefill-router submit --address http://127.0.0.1:8265 route -- --config configs/cluster.yaml "
               "--queries s3://prefill-router/incoming/batch-0001/ --model s3://prefill-router/models "
               "--out s3://prefill-router/routes/adhoc/batch-0001"],
    "nightly": ["prefill-router nightly --config configs/cluster.yaml",
                "prefill-router nightly --config configs/cluster.yaml --date 2026-12-08"],
    "retrain": ["prefill-router retrain --config configs/cluster.yaml"],
    "status": ["prefill-router status --config configs/cluster.yaml",
               "prefill-router status s3://prefill-router/models --json"],
    "pipeline": ["prefill-router pipeline --config configs/demo.yaml   (what `make demo` runs)"],
}


class Version(argparse.Action):
    """--version: the package version and the checkout's commit, read only when asked."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .runtime import code_version

        print(f"prefill-router {code_version()}")
        parser.exit()
