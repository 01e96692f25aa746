"""``prefill-router``: the one command line. Only this module configures logging and starts Ray."""

from __future__ import annotations

import argparse
import logging
import sys

from router_core.config import load_config
from router_core.errors import ConfigError, RouterError

DESCRIPTION = """\
Prefill Router: send each LLM query to the cheapest model that will answer it correctly,
predicted from a small encoder LLM's prefill activations.

A dataset is a folder (local path or s3://bucket/prefix) with queries.parquet, outcomes.parquet
and pool.yaml; see docs/data-contract.md. Every stage reads and writes local paths and s3:// URIs
alike; S3 credentials come only from the standard AWS environment variables or the machine's
identity, and AWS_ENDPOINT_URL (or storage.endpoint_url in the config) points at the server.

Exit codes: 0 success; 1 rows were rejected (see the rejects table); 2 bad input or config.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="configuration file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set storage.region=eu-west-1 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _learning_inputs(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments of the stages that learn from a dataset and its features."""
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--features", required=True, help="features folder made by extract")
    p.add_argument("--out", required=True, help=out_help)
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefill-router", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("import", help="convert a public results layout to a canonical dataset",
                       description="Convert RouterBench, LLMRouter or RouteLLM result files to the "
                       "canonical dataset. Blank cells are 'not measured' and produce no outcome; "
                       "cells that cannot be converted go to OUT/rejects.parquet. Prints the "
                       "reconciled counts.")
    p.add_argument("format", choices=["routerbench", "llmrouter", "routellm"],
                   help="routerbench: routerbench_wide.csv; llmrouter: scores_wide.csv (prices from "
                   "llm_candidates.json beside it); routellm: mmlu_gsm8k_wide.csv (split by seeded "
                   "hash of the query id: --set import.seed=N)")
    p.add_argument("src", help="source file (local path or s3:// URI)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--pool", help="pool.yaml with prices to use instead of the source's or estimated ones")
    p.add_argument("--candidates", help="llmrouter only: path of llm_candidates.json")
    _common(p)

    p = sub.add_parser("validate", help="check a dataset; list every bad row with file, row and column",
                       description="Check a canonical dataset against the data contract. Structural "
                       "problems (unreadable file, missing column, wrong type, bad pool.yaml) stop "
                       "with one line and exit 2; bad rows are listed and exit 1.")
    p.add_argument("dataset", help="dataset folder (local path or s3:// URI)")
    p.add_argument("--rejects", help="write every rejected row to this Parquet file")
    _common(p)

    p = sub.add_parser("extract", help="prefill features of every query (Ray Data actor pool)",
                       description="Run the encoder LLM over every query (prefill only) and store pooled "
                       "hidden states as float16 Parquet parts with a manifest. The output folder is "
                       "the cache: rows already there (same query id, same text, same settings) are "
                       "reused, so reruns and resumed jobs extract only what is missing. Rows whose "
                       "text is null, empty or cannot be tokenised go to OUT/rejects.parquet.")
    p.add_argument("--data", required=True, help="dataset folder, queries Parquet file, or folder of parts")
    p.add_argument("--out", required=True, help="features folder (local or s3://)")
    p.add_argument("--encoder", help="smollm2-135m (packaged), a local model folder, or a HF id")
    p.add_argument("--layers", help="comma-separated hidden-state indices (0 = embeddings), or 'all'")
    p.add_argument("--pooling", help="comma-separated: mean (all tokens), last (last token), tail (last extract.tail_tokens)")
    _common(p)

    p = sub.add_parser("select-layers", help="rank (pooling, layer) columns by Fisher separability",
                       description="On the training split, compute for every feature column its effective "
                       "dimensionality and, for every target, the Fisher separability J of correct vs "
                       "incorrect queries (after standardisation and PCA). Writes layer_profile.json "
                       "and layer_profile.png under OUT and prints the best columns.")
    _learning_inputs(p, out_help="folder for the profile")

    p = sub.add_parser("train", help="fit SharedTrunkNet with Ray Train, tuned by Optuna, and its baselines",
                       description="Fit the multi-output router on the training split: Optuna searches "
                       "learning rate, weight decay, widths, dropout, pooling, which columns (top-n by "
                       "Fisher J or each target's best) and PCA size (train.n_trials trials, each a Ray "
                       "Train run); the best setting is trained with train.seeds seeds, the best "
                       "train.keep form the ensemble, and a temperature is fitted on validation. Missing "
                       "outcomes are masked, never read as 0. Also fits the baselines (semantic MLP and "
                       "kNN on all-MiniLM-L6-v2 embeddings, computed and cached by the extraction job; "
                       "per-target logistic regression; task prior; fixed, random, oracle). Writes "
                       "OUT/<router>/{weights.safetensors,manifest.json} and OUT/manifest.json.")
    _learning_inputs(p, out_help="model folder")

    p = sub.add_parser("evaluate", help="score every trained router on the test split; report.json + report.html",
                       description="On the dataset's test queries measured on every target: accuracy and "
                       "cost at tau 0, gap closed, P-AUCCC, Pareto-AUCCC of the single models, cost "
                       "reduction, mean ROC-AUC, ECE (before/after temperature), AIQ, and for two-model "
                       "pools APGR and CPT(50%). Costs are the observed cost_usd, else tokens x prices.")
    p.add_argument("--data", required=True, help="dataset folder (local or s3://)")
    p.add_argument("--features", required=True, help="prefill features folder made by `extract`")
    p.add_argument("--model", required=True, help="model folder made by `train`")
    p.add_argument("--out", required=True, help="report folder")
    _common(p)
    p = sub.add_parser("route", help="route a bulk query set: which LLM answers each, and what it costs",
                       description="Read queries (Parquet file, folder or prefix of parts, or dataset folder; "
                       "local or s3://), extract prefill features through the model's feature cache (only "
                       "new texts are encoded), predict P(correct) for every target, assign each query by "
                       "the policy and write OUT/routes/part-*.parquet, OUT/tally.json, OUT/rejects.parquet "
                       "and OUT/run.json. Policies: threshold (cheapest target within --tau of the best "
                       "probability), utility (argmax p - lam x cost), budget (maximise expected accuracy "
                       "with total estimated cost <= --budget-usd for the whole batch).")
    p.add_argument("--queries", required=True, help="queries: Parquet file, folder/prefix of parts, or dataset folder")
    p.add_argument("--model", required=True, help="model folder made by `train`")
    p.add_argument("--out", required=True, help="routes folder (one run per folder)")
    p.add_argument("--policy", choices=["threshold", "utility", "budget"], default="threshold")
    p.add_argument("--tau", type=float, default=0.0, help="threshold policy: 0 = most probable, 1 = cheapest")
    p.add_argument("--lam", type=float, default=0.0, help="utility policy: accuracy per dollar traded")
    p.add_argument("--budget-usd", type=float, help="budget policy: total dollars for the batch (> 0)")
    p.add_argument("--features", help="feature cache folder (default: the model's training features)")
    p.add_argument("--run-id", help="name this run (default: a digest of queries, router and policy)")
    p.add_argument("--router", help="which router under MODEL (default: the model's serving router, prefill_trunk_distilled "
                   "when train distilled one, else prefill_trunk)")
    _common(p)

    p = sub.add_parser("submit", help="run a stage as a Ray Job on a cluster; follow its logs; exit as it did",
                       description="Submit `STAGE ARGS...` to a Ray cluster's Jobs API (JobSubmissionClient): "
                       "the repository is uploaded as the working directory and the stage runs as "
                       "`python -m jobs.cli STAGE ARGS...` on the cluster; logs are followed and the exit "
                       "code mirrors the job's status (0 succeeded, 1 failed, 130 stopped). Clusters with "
                       "token auth: the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                       "~/.ray/auth_token. Put the stage's own options after `--`.")
    p.add_argument("stage", help="import, validate, extract, select-layers, train, evaluate, route, pipeline, ...")
    p.add_argument("stage_args", nargs=argparse.REMAINDER, help="the stage's arguments (after --)")
    p.add_argument("--address", required=True, help="the Jobs API, e.g. http://HEAD:8265")
    p.add_argument("--working-dir", help="folder to upload (default: this checkout)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable to the job (credentials are refused)")
    p.add_argument("--python", default="python", help="the cluster's Python (default: python)")
    p.add_argument("--no-follow", action="store_true", help="print the job id and return")
    p.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    _common(p)

    p = sub.add_parser("nightly", help="route every query set that appeared under nightly.input since the last run",
                       description="List the children of nightly.input (Parquet files or folders); route each "
                       "one not yet in the watermark into nightly.output/<date>/<set>/ and add it to the "
                       "watermark only once its outputs are complete. configs/nightly.yaml shows the fields.")
    p.add_argument("--date", help="the date of the outputs (default: today, UTC), YYYY-MM-DD")
    _common(p)

    p = sub.add_parser("retrain", help="merge new outcomes, retrain, promote the challenger if it is not worse",
                       description="Merge every batch of new labelled outcomes under retrain.new into the "
                       "champion's training data (new queries join train; the test split is fixed), extract "
                       "only new texts into retrain.features, train a challenger with this config's settings "
                       "into retrain.models/vNNNN/, evaluate challenger and champion on the same test split, "
                       "and move champion.json to the challenger only if its P-AUCCC is not worse.")
    _common(p)

    p = sub.add_parser("pipeline", help="the main job end to end: import, extract, select, train, evaluate, route",
                       description="Run every stage on one output folder (pipeline.out): import the source "
                       "(pipeline.format, pipeline.source), validate, extract, select-layers, train, "
                       "evaluate, and route the test split with pipeline.policy; print where the report "
                       "and the routes are. configs/demo.yaml is the embedded default (make demo).")
    _common(p)
    return parser


def _stage_overrides(args: argparse.Namespace) -> list[str]:
    """Shortcut flags become --set overrides (they win over the config file)."""
    out = []
    if getattr(args, "encoder", None):
        out.append(f"extract.encoder={args.encoder}")
    if getattr(args, "layers", None):
        layers = args.layers.strip()
        out.append("extract.layers=all" if layers == "all" else f"extract.layers=[{layers}]")
    if getattr(args, "pooling", None):
        out.append(f"extract.pooling=[{args.pooling}]")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    try:
        cfg = load_config(args.config, args.overrides + _stage_overrides(args))
        if args.command == "import":
            from . import data

            run = data.run_import(cfg, args.format, args.src, args.out, args.pool, args.candidates)
            data.print_import(run)
            return 0
        if args.command == "validate":
            from . import data

            run = data.run_validate(cfg, args.dataset, args.rejects)
            data.print_validate(run, args.dataset)
            return 0 if run.result.ok else 1
        if args.command == "extract":
            from . import extract

            run = extract.run_extract(cfg, args.data, args.out)
            extract.print_extract(run)
            return 0 if not run.rejected else 1
        if args.command == "select-layers":
            from . import select_layers

            run = select_layers.run_select_layers(cfg, args.data, args.features, args.out)
            select_layers.print_select(run)
            return 0
        if args.command == "train":
            from . import train

            run = train.run_train(cfg, args.data, args.features, args.out)
            train.print_train(run)
            return 0
        if args.command == "evaluate":
            from . import evaluate

            run = evaluate.run_evaluate(cfg, args.data, args.features, args.model, args.out)
            evaluate.print_evaluate(run)
            return 0
        if args.command == "submit":
            from . import submit

            rest = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
            if args.config:
                rest = ["--config", args.config, *rest]
            rest += [x for o in args.overrides for x in ("--set", o)]
            sub_run = submit.submit(args.address, args.stage, rest, args.working_dir, args.env,
                                    not args.no_follow, args.timeout, args.python)
            return sub_run.exit_code
        if args.command == "nightly":
            from . import nightly

            nightly.print_nightly(nightly.run_nightly(cfg, args.date))
            return 0
        if args.command == "retrain":
            from . import retrain

            retrain.print_retrain(retrain.run_retrain(cfg))
            return 0
        if args.command == "pipeline":
            from . import pipeline

            pipeline.run_pipeline(cfg)
            return 0
        if args.command == "route":
            from . import route

            if args.policy == "budget" and (args.budget_usd is None or not args.budget_usd > 0):
                raise ConfigError(f"--budget-usd must be a positive number of dollars with --policy budget, "
                                  f"got {args.budget_usd}")
            pol = route.Policy(args.policy, args.tau, args.lam, args.budget_usd)
            run = route.run_route(cfg, args.queries, args.model, args.out, pol, args.features, args.run_id, args.router)
            route.print_route(run)
            return 0
    except RouterError as e:
        print(f"prefill-router {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"prefill-router {args.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
