"""Wiring shared by the stages: storage from config and environment, printing tables."""

from __future__ import annotations

import os

from router_core.config import AppConfig
from router_core.storage import Storage


def storage_from(cfg: AppConfig) -> Storage:
    """Storage from config; the standard ``AWS_ENDPOINT_URL`` / ``AWS_REGION`` fill unset fields."""
    endpoint = cfg.storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )
    region = cfg.storage.region
    if "region" not in cfg.storage.model_fields_set:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or region
    return Storage(endpoint_url=endpoint, region=region, attempts=cfg.storage.attempts, backoff_s=cfg.storage.backoff_s)


def format_table(header: list[str], rows: list[list[object]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j and _numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1e5 else f"{c:,.0f}"
    return str(c)


def _numeric(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%x"))
        return True
    except ValueError:
        return False
