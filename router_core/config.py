"""Typed, strict configuration: defaults < YAML file < ``--set a.b=c`` overrides.

Building a config has no side effects. Secrets never live here: S3 credentials come from the
environment or the cloud's identity; endpoint and region are fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .dataset import format_validation_error
from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StorageConfig(Strict):
    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:5000")
    region: str = "us-east-1"
    attempts: int = Field(6, ge=1, description="tries of an S3 call that fails for a transient reason")
    backoff_s: float = Field(0.5, ge=0, description="first wait between tries; doubles each time (0.5: ~15 s in all)")


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (ignored on a cluster)")


class ImportConfig(Strict):
    seed: int = 0
    val_frac: float = Field(0.1, ge=0, lt=1)
    test_frac: float = Field(0.2, ge=0, lt=1)


class ExtractConfig(Strict):
    """How the encoder reads queries. Fields marked (identity) change the features' cache key."""

    encoder: str = Field("smollm2-135m", description="packaged alias, local model folder, or HF id (identity)")
    revision: str | None = Field(None, description="HF revision for a hub id (identity)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="compute dtype (identity): auto = bfloat16 on a GPU, or on a CPU where a probe "
        "finds torch's bfloat16 matmul fast (native avx512_bf16 or AMX, and not capped by ATEN_CPU_CAPABILITY "
        "or ONEDNN_MAX_CPU_ISA), else float32; decided once per run")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:0")
    max_length: int = Field(1024, ge=8, description="token cap per query (identity)")
    truncation_side: Literal["left", "right"] = Field(
        "left", description="which end to cut past max_length; left keeps the question (identity)")
    chat_template: bool = Field(True, description="wrap the query as a user turn (identity)")
    pooling: list[Literal["mean", "last", "tail"]] = Field(
        ["mean", "last"], min_length=1, description="mean of all tokens, last token, mean of the last tail_tokens (identity)")
    tail_tokens: int = Field(32, ge=1, description="tokens averaged by the tail pooling (identity when used)")
    layers: Literal["all"] | list[int] = Field("all", description="hidden_states indices, 0 = embeddings (identity)")
    token_budget: int = Field(8192, ge=64, description="padded tokens per forward batch")
    max_batch_size: int = Field(64, ge=1)
    max_padding: float = Field(0.25, gt=0, le=1, description="a row padded by more than this share of its batch's "
                               "width starts a new batch (1 = only token_budget and max_batch_size cut)")
    prefix_sharing: bool = Field(True, description="run shared prefixes once and reuse their KV cache")
    min_prefix_tokens: int = Field(16, ge=1, description="shortest prefix worth sharing (16: the chat template's head, "
                                   "28 SmolLM2 tokens, is shared even where queries have no preamble in common)")
    min_prefix_group: int = Field(4, ge=2, description="fewest queries that share a prefix")
    kv_budget_tokens: int = Field(8192, ge=256, description="cached prefix tokens held per suffix batch (rows x "
                                  "prefix; 8192 ran 1.32x faster than 32768 on RouterBench's preambles: docs/extraction.md)")
    rows_per_task: int = Field(512, ge=1, description="queries per Ray Data block handed to an actor, and the "
                               "most in one part file")
    part_seconds: float = Field(60.0, gt=0, description="an actor commits a part file after about this much work, "
                                "at the rate it measures (docs/extraction.md, block sizing)")
    first_part_rows: int = Field(8, ge=1, description="queries of an actor's first part, before it has a rate")
    stall_timeout_s: float = Field(900.0, gt=0, description="fail (exit 3) when no query finishes on any actor for "
                                   "this long; Ray Data's own no-progress timeout is off for extraction")
    actors: int = Field(1, ge=1, description="actor pool size")
    actor_num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per actor")
    actor_num_gpus: float = Field(0, ge=0, description="GPUs per actor (1 on GPU nodes)")
    actor_memory_mb: float | None = Field(None, gt=0, description="memory each actor asks the scheduler for; None = "
                                          "estimated from the encoder and the token budgets (extraction.memory_estimate_mb)")
    actor_resources: dict[str, float] = Field(
        {}, description="custom Ray resources per actor, e.g. {encoder: 1} to place actors on the nodes that declare it")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per actor; None = all cores")
    cache_dir: str | None = Field(None, description="converted encoders; None = each node's own "
                                  "(PREFILL_ROUTER_CACHE, else ~/.cache/prefill-router)")


class SelectConfig(Strict):
    """Layer selection on the training split (Fisher separability J; d_eff as a diagnostic)."""

    strategy: Literal["top_k_mean", "per_target", "cv_auc"] = Field(
        "top_k_mean", description="top-k by mean Fisher J, each target's best J, or top-k by cross-validated probe AUC")
    cv_folds: int = Field(3, ge=2, description="stratified folds of the cv_auc probe")
    k: int = Field(3, ge=1, description="columns kept by top_k_mean")
    pca_dim: int = Field(64, ge=2, description="PCA size in which J is computed")
    eps: float = Field(1e-3, gt=0, description="ridge added to S_w")
    pooling: list[Literal["mean", "last", "tail"]] | None = Field(None, description="restrict to these poolings")


class TrainConfig(Strict):
    """SharedTrunkNet training: Optuna over the search space, then the best setting as an ensemble."""

    seed: int = 0
    val_frac: float = Field(0.15, gt=0, lt=1, description="share of train held out when there is no val split")
    n_trials: int = Field(8, ge=1, description="Optuna trial budget (one seed each)")
    seeds: int = Field(10, ge=1, description="ensemble members trained with the best setting")
    keep: int = Field(5, ge=1, description="members kept, by validation loss")
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(15, ge=1)
    batch_size: int = Field(512, ge=8)
    max_concurrent: int = Field(1, ge=1, description="Optuna trials fitted at once (each its own Ray Train run "
                                "of num_workers workers): rounds of this many, so 16 trials at 8 take two trials' time")
    in_process: bool = Field(False, description="fit the members in the driver process, not on Ray Train: for small "
                             "data on one machine (no worker-group start per fit, ~10-20 s each; no restart of lost workers)")
    num_workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    cpus_per_worker: float = Field(0.5, gt=0)
    worker_resources: dict[str, float] = Field(
        {}, description="custom Ray resources per train worker, e.g. {encoder: 0.5} to place workers on those nodes")
    storage_path: str | None = Field(None, description="where Ray Train keeps checkpoints: shared storage "
                                     "(s3:// or NFS) on a multi-node cluster; None = a local temporary folder")
    max_failures: int = Field(2, ge=0, description="Ray Train restarts of a lost worker group (resumes "
                              "from the last finished member)")
    collective_timeout_s: int = Field(120, ge=5, description="how long a worker waits in a gradient all-reduce "
                                      "for a peer that may be lost (Ray's default, 1800 s, stalls a restart)")
    use_gpu: bool = False
    pairwise: float = Field(0.0, ge=0.0, description="weight of a pairwise term beside the BCE in every trunk's "
                            "loss: the order of one query's targets (router_core.model.pairwise_loss)")
    max_layers: int = Field(4, ge=1, description="most feature columns a trial may concatenate")
    design: Literal["search", "all_mean_pca200"] = Field(
        "search", description="prefill_trunk's inputs: search = Optuna chooses the pooling, the columns (by Fisher "
        "J) and the PCA; all_mean_pca200 = a fixed recipe: every mean-pooled layer concatenated, scaler + PCA-200 "
        "fitted on train, Optuna tuning the net only")
    temperature: bool = Field(True, description="fit a temperature on the validation split (ECE before/after)")
    extra_inputs: list[Literal["semantic", "task_prior"]] = Field(
        [], description="appended to prefill_trunk's prefill columns: sentence embedding, task prior probabilities")
    distil_width: int = Field(128, ge=0, description="width of prefill_trunk_distilled, one net trained on the "
                              "ensemble's probabilities for serving (route's default); 0 = none")
    distil_mix: int = Field(4, ge=0, description="distillation: random mixtures of train pairs per train row")
    residual: bool = Field(True, description="also fit prefill_trunk_residual: the trunk's best setting learning only "
                           "the correction to the task prior's logits (the global mean's without tasks)")
    serve: str = Field("auto", description="the router route serves: auto = the simplest within one standard error "
                       "of the best cross-validated P-AUCCC on held-out rows (router_core.selection, "
                       "train.cross_fit), or a router name")
    cross_fit: int = Field(5, ge=0, description="the choice of the served router on out-of-fold training rows: "
                           "the trunk (one seed), residual trunk, logistic regression and prior refitted in this many "
                           "folds of train, each row predicted by the refit that did not see it; 0 = on the "
                           "validation split (several times fewer rows)")
    cv_folds: int = Field(2, ge=2, description="parts of the validation rows the served router is chosen on "
                          "without cross_fit, each scored by blends fitted on the rest (out-of-fold rows are "
                          "scored part by cross_fit part)")
    cv_repeats: int = Field(5, ge=1, description="seeded repeats of that partition (validation rows only)")
    accuracy_tolerance: float = Field(0.005, ge=0.0, le=1.0, description="route's default operating point: the "
                                      "cheapest threshold whose accuracy is at most this much below always calling "
                                      "the best single target's (0.005 = half a point)")
    accuracy_guard_z: float | None = Field(1.645, ge=0.0, description="route's default operating point, guarded. "
                                    "measured: the walk stops before the first threshold whose measured accuracy, row "
                                    "by row against the best single target, may be below -accuracy_tolerance at this "
                                    "many standard errors (mean - z SE; 1.645 = one-sided 95%); null = the point "
                                    "estimate alone. expected: it stops where the measured accuracy is below by more "
                                    "than this many standard errors (mean + z SE); null = no guard")
    promise_batch: int | None = Field(
        1000, ge=1, description="measured rule: make route's default operating point a promise for a batch of this "
        "many queries, not for the mean: a batch's own accuracy change scatters around the mean by SD/sqrt(batch), "
        "so the bound is mean - accuracy_guard_z * sqrt(SE^2 + SD^2/batch) (the interval route's tally gives a batch "
        "of that size; issue 47's study, docs/routing.md: with the mean's bound alone, the test split fell more than "
        "accuracy_tolerance below in 10 of 27 runs, with a batch of 1000 in 2). null = the mean's bound alone")
    fallback_best_single: bool = Field(
        True, description="measured rule: where even tau 0 may give away more than accuracy_tolerance on the held-out "
        "rows (its one-sided bound below), serve the best single target for every query instead of the router at tau "
        "0 (train says so in one line either way). false: the router serves at tau 0 all the same (issue 47's study: "
        "the 2 of 27 runs the batch bound broke were runs whose tau 0 fell below the promise on test; with the "
        "fallback, 27 of 27 kept it)")
    operating_rule: Literal["measured", "expected"] = Field(
        "measured", description="how train chooses route's default threshold: measured = on the measured routed "
        "accuracy of every held-out row (the out-of-fold training rows the served router was chosen on, plus "
        "validation); expected = the earlier rule, on the router's own expected accuracy over validation alone "
        "(kept for the study: optimistic where it decides a route, issue 47)")


class BaselinesConfig(Strict):
    """The routers ``train`` fits beside the prefill SharedTrunkNet, for ``evaluate`` to compare."""

    semantic_encoder: str = Field("minilm-l6", description="sentence encoder of the semantic baselines")
    semantic_max_length: int = Field(256, ge=8, description="its token cap (the question end is kept)")
    semantic_features: str | None = Field(None, description="where its embeddings are cached; None = MODEL/semantic_features")
    semantic_trials: int | None = Field(None, ge=1, description="Optuna trials of the semantic MLP; None = train.n_trials")
    in_process: bool | None = Field(None, description="fit the semantic MLP's members in the driver process, not on "
                                    "Ray Train: a small net on 384 inputs; None = as train.in_process")
    knn_k: list[int] = Field([5, 10, 20, 50, 100], min_length=1, description="k tried by semantic_knn on val")
    cross_fit: bool = Field(True, description="refit the semantic MLP (one seed) and kNN on train.cross_fit's parts, "
                            "so that MODEL/held_out.parquet holds their out-of-fold probabilities beside the "
                            "prefill candidates' (scored for the record; route serves no semantic router)")
    logreg_c: list[float] = Field([0.001, 0.01, 0.1, 1.0], min_length=1, description="C tried by prefill_logreg on val")
    random_seed: int = 0


class RouteConfig(Strict):
    """The route job: prediction tasks and output layout (the policy comes from the command line)."""

    task_cpus: float = Field(1.0, gt=0, description="CPUs per prediction task")
    rows_per_part: int = Field(500_000, ge=1, description="rows per routes Parquet part")


class Policy(Strict):
    """How ``route`` turns probabilities and costs into choices (router_core.routing): the one
    declaration of a policy, for the command line (--policy, --tau, --lam, --budget-usd) and configs."""

    name: Literal["threshold", "utility", "budget"] = Field(
        "threshold", description="threshold: cheapest within tau of the best; utility: argmax p - lam x cost; "
        "budget: most expected accuracy within budget_usd for the batch")
    tau: float | None = Field(None, ge=0, le=1, description="threshold: 0 = the most probable target, 1 = the cheapest; "
                              "None = the model's operating point, chosen by train on held-out rows (train.operating_rule)")
    lam: float = Field(0.0, ge=0, description="utility: accuracy traded per dollar")
    budget_usd: float | None = Field(None, description="budget: total dollars for a batch (> 0)")

    @model_validator(mode="after")
    def _budget_is_positive(self) -> "Policy":
        if self.name == "budget" and not (self.budget_usd is not None and self.budget_usd > 0):
            raise ValueError(f"budget_usd (--budget-usd) must be a positive number of dollars with the budget "
                             f"policy, got {self.budget_usd}")
        return self

    def params(self) -> dict:
        return {"threshold": {"tau": self.tau}, "utility": {"lam": self.lam},
                "budget": {"budget_usd": self.budget_usd}}[self.name]


def make_policy(**fields) -> Policy:
    """A Policy from command-line values; a bad one is a ConfigError naming the field."""
    try:
        return Policy(**fields)
    except ValidationError as e:
        msgs = [f"{'.'.join(map(str, x['loc'])) + ': ' if x['loc'] else ''}{x['msg'].removeprefix('Value error, ')}"
                for x in e.errors()]
        raise ConfigError(f"policy: {'; '.join(msgs)}") from None


class PipelineConfig(Strict):
    """``pipeline``: the main job end to end under one output folder."""

    out: str = Field("out/demo", description="output folder (local or s3://) of every stage")
    format: Literal["routerbench", "llmrouter", "routellm"] = "routerbench"
    source: str = Field("examples/routerbench/routerbench_compact.csv.gz",
                        description="file to import (.csv, or .csv.gz); the default ships with the project")
    pool: str | None = Field(None, description="pool.yaml with prices (else the importer's)")
    candidates: str | None = Field(None, description="llmrouter: llm_candidates.json")
    route_split: str = Field("test", description="which split's queries the route stage routes")
    policy: Policy = Policy()
    until: Literal["import", "validate", "extract", "select-layers", "train", "evaluate"] | None = Field(
        None, description="stop after this stage (the ones before it run too); None = every stage, route last")


class NightlyConfig(Strict):
    """``nightly``: route the query sets that appeared under ``input`` since the last success."""

    input: str | None = Field(None, description="prefix whose children (Parquet files or folders) are query sets")
    output: str | None = Field(None, description="prefix for dated outputs: OUTPUT/<date>/<set>/")
    model: str | None = Field(None, description="model folder made by train")
    watermark: str | None = Field(None, description="watermark object; None = OUTPUT/_watermark.json")
    policy: Policy = Field(Policy(), description="the policy of every query set (budget_usd: per set)")


class RetrainConfig(Strict):
    """``retrain``: merge new labelled outcomes, retrain, promote the challenger only if not worse."""

    data: str | None = Field(None, description="the first training dataset (later: the champion's)")
    new: str | None = Field(None, description="prefix of batch folders with outcomes.parquet [queries.parquet, pool.yaml]")
    features: str | None = Field(None, description="the feature cache folder (only new texts are encoded)")
    models: str | None = Field(None, description="versioned model folders and champion.json")


class OnboardConfig(Strict):
    """``onboard``: a new target from a few hundred labelled answers, the pool's routers untouched."""

    min_labels: int = Field(50, ge=10, description="fewest labelled train/val answers of the new target; at least "
                            "5 right and 5 wrong among them")
    prior_weight: float = Field(10.0, ge=0, description="pseudo-labels that shrink the prior head's task means "
                                "toward the labels' overall mean")
    folds: int = Field(5, ge=2, description="cross-validation parts on the labels: the heads are compared by their "
                       "out-of-fold log loss, and the pool's gain is measured out of fold")
    margin_se: float = Field(2.0, ge=0, description="the prior head replaces the similar head only where its "
                             "out-of-fold log loss is lower by more than this many standard errors")
    max_rows: int = Field(2000, ge=0, description="retrain: a batch under retrain.new of one model not in the pool, "
                          "with fewer outcomes than this, goes through onboard instead of a full retrain (0: never)")
    require_gain: bool = Field(True, description="add the target only where, out of fold on the labelled rows "
                               "measured on every target, the pool's P-AUCCC with it is at least that without it")


class AppConfig(Strict):
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    import_: ImportConfig = Field(ImportConfig(), alias="import")
    extract: ExtractConfig = ExtractConfig()
    select: SelectConfig = SelectConfig()
    train: TrainConfig = TrainConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    route: RouteConfig = RouteConfig()
    pipeline: PipelineConfig = PipelineConfig()
    nightly: NightlyConfig = NightlyConfig()
    retrain: RetrainConfig = RetrainConfig()
    onboard: OnboardConfig = OnboardConfig()


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. storage.region=eu-west-1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AppConfig:
    """Load ``path`` (YAML) over the defaults, then apply ``key=value`` overrides."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        tree = loaded or {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
        source += f" + --set {key}"
    try:
        return AppConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None
