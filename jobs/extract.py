"""Stage ``extract``: prefill features of every query, by a Ray Data actor pool.

The output folder is also the cache (router_core.features): rows already there (same query id,
same text, same settings) are reused, so a rerun on the same corpus extracts nothing and a job
killed half way resumes. Rows that fail the checks or that the encoder cannot read are listed in
``OUT/rejects.parquet`` with their reason.
"""

from __future__ import annotations

from router_core import schemas
from router_core.config import AppConfig
from router_core.features import REJECTS
from router_core.storage import join

from .common import storage_from
from .encoding import ExtractRun, encode, prepare


def run_extract(cfg: AppConfig, data_uri: str, out: str, hook=None) -> ExtractRun:
    """``hook``: wraps each actor's encoder (jobs.encoding.encode); tests only."""
    storage = storage_from(cfg)
    run = encode(cfg, prepare(storage, data_uri), out, hook)
    rej_uri = join(out, REJECTS)
    if run.rejects:
        storage.write_table(schemas.rejects_table(run.rejects), rej_uri)
    elif storage.exists(rej_uri):  # left by an earlier run whose rejected rows are now gone or fixed
        storage.delete(rej_uri)
    return run


def print_extract(run: ExtractRun) -> None:
    s = run.stats
    rate = s.tokens / s.seconds if s.seconds else 0.0
    print(f"extracted {run.out}")
    print(f"  rows:   {run.input_rows} input = {run.reused} reused + {run.extracted} extracted"
          f" + {run.rejected} rejected; folder now holds {run.total_rows} rows")
    if run.extracted:
        print(f"  tokens: {s.tokens} query tokens, {s.computed_tokens} computed after prefix sharing"
              f" ({s.prefix_groups} shared prefixes), padding waste {100 * s.padding_waste:.1f}%")
        print(f"  speed:  {s.seconds:.1f} s in encoder calls, {rate:,.0f} query tokens/s;"
              f" {run.seconds:.1f} s wall")
        print(f"  memory: actor peak {run.actor_peak_rss_mb:,.0f} MiB of the {run.actor_memory_mb:,.0f} MiB it asked for")
    if run.rejected:
        print(f"  rejects: {join(run.out, REJECTS)}")
