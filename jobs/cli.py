"""``prefill-router``: the one command line, a table of stages. Only this module configures logging
and starts nothing itself: each stage's ``run`` reads, calls the core, writes; ``report`` prints;
``exit_code`` says how it ended (the codes are router_core.errors'). ``submit`` and the manifests'
tests read the stage names from ``STAGES``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from router_core.config import load_config, make_policy
from router_core.errors import FAILED, INTERRUPTED, OK, REJECTED, REJECTED_LINE, RouterError

from . import cli_args as A

DESCRIPTION = """\
Prefill Router: send each LLM query to the cheapest model that will answer it correctly,
predicted from a small encoder LLM's prefill activations.

A dataset is a folder (local path or s3://bucket/prefix) with queries.parquet, outcomes.parquet
and pool.yaml; see docs/data-contract.md. Every stage reads and writes local paths and s3:// URIs
alike; S3 credentials come only from the standard AWS environment variables or the machine's
identity, and AWS_ENDPOINT_URL (or storage.endpoint_url in the config) points at the server.

Exit codes: 0 success; 1 some rows were rejected (listed in a rejects table, the rest done);
2 bad input or configuration; 3 the job could not finish (storage unreachable, training failed,
a submitted job failed); 130 interrupted.
"""


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable  # (cfg, args) -> a run record
    report: Callable  # (run) -> None: what the user reads
    exit_code: Callable = lambda run: OK  # (run) -> 0, or REJECTED where rows were rejected


def _stage(module: str, fn: str):
    """``jobs.<module>.<fn>``, imported when called (a stage's imports cost seconds: torch, Ray)."""
    def call(*a):
        import importlib

        return getattr(importlib.import_module(f"jobs.{module}"), fn)(*a)
    return call


def _submit(cfg, a):
    from . import submit

    rest = a.stage_args[1:] if a.stage_args[:1] == ["--"] else a.stage_args
    if a.config:
        rest = ["--config", a.config, *rest]
    rest += [x for o in a.overrides for x in ("--set", o)]
    return submit.submit(a.address, a.stage, rest, _submittable(), a.working_dir, a.env, not a.no_follow, a.timeout,
                         a.python)


def _submittable() -> list[str]:
    return [s.name for s in STAGES if s.name != "submit"]


def _rejected(run) -> int:
    return REJECTED if run.rejected else OK


STAGES: list[Stage] = [
    Stage("import", "convert a public results layout to a canonical dataset",
          "Convert RouterBench, LLMRouter or RouteLLM result files to the canonical dataset. Blank cells are "
          "'not measured' and produce no outcome; cells that cannot be converted go to OUT/rejects.parquet. "
          "Prints the reconciled counts.", A.import_args,
          lambda cfg, a: _stage("data", "run_import")(cfg, a.format, a.src, a.out, a.pool, a.candidates),
          _stage("data", "print_import"), lambda run: REJECTED if run.rejects.num_rows else OK),
    Stage("validate", "check a dataset; list every bad row with file, row and column",
          "Check a canonical dataset against the data contract. Structural problems (unreadable file, missing "
          "column, wrong type, bad pool.yaml) stop with one line and exit 2; bad rows are listed and exit 1.",
          A.validate_args, lambda cfg, a: _stage("data", "run_validate")(cfg, a.dataset, a.rejects),
          _stage("data", "print_validate"), lambda run: OK if run.result.ok else REJECTED),
    Stage("extract", "prefill features of every query (Ray Data actor pool)",
          "Run the encoder LLM over every query (prefill only) and store pooled hidden states as float16 "
          "Parquet parts with a manifest. The output folder is the cache: rows already there (same query id, "
          "same text, same settings) are reused, so reruns and resumed jobs extract only what is missing; a "
          "full hit reads the folder and writes nothing. Rows whose text is null, empty or cannot be "
          "tokenised go to OUT/rejects.parquet.", A.extract_args,
          lambda cfg, a: _stage("extract", "run_extract")(cfg, a.data, a.out), _stage("extract", "print_extract"),
          _rejected),
    Stage("select-layers", "rank (pooling, layer) columns by Fisher separability (a report)",
          "On the training split, compute for every feature column its effective dimensionality and, for every "
          "target, the Fisher separability J of correct vs incorrect queries (after standardisation and PCA). "
          "Writes layer_profile.json and layer_profile.png under OUT and prints the best columns. Advisory: "
          "train profiles the columns itself and searches the same strategies (top_k_mean, per_target).",
          lambda p: A.learning_inputs(p, "folder for the profile"),
          lambda cfg, a: _stage("select_layers", "run_select_layers")(cfg, a.data, a.features, a.out),
          _stage("select_layers", "print_select")),
    Stage("train", "fit SharedTrunkNet with Ray Train, tuned by Optuna, and its baselines",
          "Fit the multi-output router on the training split: Optuna searches learning rate, weight decay, "
          "widths, dropout, pooling, which columns (top-k by mean Fisher J or each target's best) and PCA "
          "size (train.n_trials trials, each a Ray Train run); the best setting is trained with train.seeds "
          "seeds, the best train.keep form the ensemble, and a temperature is fitted on validation. Missing "
          "outcomes are masked, never read as 0. Also fits the baselines (semantic MLP and kNN on "
          "all-MiniLM-L6-v2 embeddings, computed and cached by the extraction job; per-target logistic "
          "regression; task prior; fixed, random, oracle). Writes OUT/<router>/{weights.safetensors,"
          "manifest.json} and the index OUT/manifest.json.", lambda p: A.learning_inputs(p, "model folder"),
          lambda cfg, a: _stage("train", "run_train")(cfg, a.data, a.features, a.out), _stage("train", "print_train")),
    Stage("evaluate", "score every trained router on the test split; report.json + report.html",
          "On the dataset's test queries measured on every target: accuracy and cost at tau 0, gap closed, "
          "P-AUCCC, Pareto-AUCCC of the single models, cost reduction, mean ROC-AUC, ECE (before/after "
          "temperature), AIQ, and for two-model pools APGR and CPT(50%). Costs are the observed cost_usd, "
          "else tokens x prices.", A.evaluate_args,
          lambda cfg, a: _stage("evaluate", "run_evaluate")(cfg, a.data, a.features, a.model, a.out),
          _stage("evaluate", "print_evaluate")),
    Stage("route", "route a bulk query set: which LLM answers each, and what it costs",
          "Read queries (Parquet file, folder or prefix of parts, or dataset folder; local or s3://), extract "
          "prefill features through the model's feature cache (only new texts are encoded), predict "
          "P(correct) for every target, assign each query by the policy and write OUT/routes/part-*.parquet, "
          "OUT/tally.json, OUT/rejects.parquet and OUT/run.json. Policies: threshold (cheapest target within "
          "--tau of the best probability), utility (argmax p - lam x cost), budget (maximise expected "
          "accuracy with total estimated cost <= --budget-usd for the whole batch).", A.route_args,
          lambda cfg, a: _stage("route", "run_route")(
              cfg, a.queries, a.model, a.out,
              make_policy(name=a.policy, tau=a.tau, lam=a.lam, budget_usd=a.budget_usd), a.features, a.run_id,
              a.router), _stage("route", "print_route"), _rejected),
    Stage("onboard", "add a new target model from a few hundred labelled answers, without retraining",
          "Fit only the new target's column on its labelled train/val answers: a head on the served router's "
          "probabilities for the other targets (a new model is right where models like it are right), or its task "
          "prior where that is clearly better out of fold (onboard.margin_se); the old routers are kept bit for bit. The target is added only "
          "where, out of fold, the pool routes at least as well with it (onboard.require_gain). Writes OUT/dataset, "
          "OUT/model (a new version with lineage and a new operating point), OUT/report (evaluate), "
          "OUT/decision.json and OUT/rejects.parquet. Needs onboard.min_labels labels.", A.onboard_args,
          lambda cfg, a: _stage("onboard", "run_onboard")(cfg, a.data, a.features, a.model, a.new, a.out),
          _stage("onboard", "print_onboard"), _rejected),
    Stage("submit", "run a stage as a Ray Job on a cluster; follow its logs; exit as it did",
          "Submit `STAGE ARGS...` to a Ray cluster's Jobs API (JobSubmissionClient): the repository is "
          "uploaded as the working directory and the stage runs as `python -m jobs.cli STAGE ARGS...` on the "
          "cluster; logs are followed and the exit code mirrors the job's status (0 succeeded, 3 failed, 130 "
          "stopped). Clusters with token auth: the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
          "~/.ray/auth_token. Put the stage's own options after `--`.",
          lambda p: A.submit_args(p, _submittable()), _submit,
          lambda run: None, lambda run: run.exit_code),
    Stage("nightly", "route every query set that appeared under nightly.input since the last run",
          "List the children of nightly.input (Parquet files or folders); route each one not yet in the "
          "watermark into nightly.output/<date>/<set>/ and add it to the watermark only once its outputs are "
          "complete. configs/cluster.yaml shows the fields (nightly.model: the retrain folder, whose champion serves).", A.nightly_args,
          lambda cfg, a: _stage("nightly", "run_nightly")(cfg, a.date), _stage("nightly", "print_nightly"),
          lambda run: REJECTED if any(r["rejected"] for r in run.routed.values()) else OK),
    Stage("retrain", "merge new outcomes, retrain, promote the challenger if it is not worse",
          "Merge every batch of new labelled outcomes under retrain.new into the champion's training data (new "
          "queries join train; the test split is fixed), extract only new texts into retrain.features, train "
          "a challenger with this config's settings into retrain.models/vNNNN/, evaluate challenger and "
          "champion on the same test split, and move champion.json to the challenger only if its P-AUCCC is "
          "not worse.", A.none, lambda cfg, a: _stage("retrain", "run_retrain")(cfg),
          _stage("retrain", "print_retrain")),
    Stage("status", "where the loop stands: the champion, every version and its decision, the last night",
          "Read a retrain folder (MODELS, or retrain.models) and the nightly watermark (--nightly, or "
          "nightly.output): which version serves, every version with how it was made, whether it was promoted "
          "and its test P-AUCCC against the champion's then, the targets onboarded, and how many query sets the "
          "nightly job has done and when it last succeeded. Writes nothing. Example: prefill-router status "
          "--config configs/cluster.yaml", A.status_args,
          lambda cfg, a: _stage("status", "run_status")(cfg, a.models, a.nightly, a.json),
          _stage("status", "print_status")),
    Stage("pipeline", "the main job end to end: import, extract, select, train, evaluate, route",
          "Run every stage on one output folder (pipeline.out): import the source (pipeline.format, "
          "pipeline.source), validate, extract, select-layers, train, evaluate, and route the test split with "
          "pipeline.policy; print where the report and the routes are. configs/demo.yaml is the embedded "
          "default (make demo).", A.none, lambda cfg, a: _stage("pipeline", "run_pipeline")(cfg), lambda run: None),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefill-router", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=A.Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for s in STAGES:
        examples = "\n".join(f"  {e}" for e in A.EXAMPLES.get(s.name, []))
        p = sub.add_parser(s.name, help=s.help, description=s.description,
                           epilog=(f"examples:\n{examples}\n\n" if examples else "") + A.EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.arguments(p)
        A.common(p)
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    if not args.verbose:  # model loads print no bars of their own (read when huggingface_hub is imported),
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # nor the GGUF conversion's plain tqdm bar (a 272-step line)
    stage = next(s for s in STAGES if s.name == args.command)
    try:
        cfg = load_config(args.config, args.overrides + _stage_overrides(args))
        run = stage.run(cfg, args)
        stage.report(run)
        code = stage.exit_code(run)
        if code == REJECTED:  # the line submit reads to tell rejected rows from a crash (both exit 1 bare)
            print(f"prefill-router {args.command}: {REJECTED_LINE}", file=sys.stderr)
        return code
    except RouterError as e:
        print(f"prefill-router {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"prefill-router {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception:  # a crash, not the input: its traceback, and the code a scheduler reads as failed
        traceback.print_exc()
        print(f"prefill-router {args.command}: crashed (exit {FAILED})", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
