"""``status``: where the operating loop stands, an operator's first command in the morning.

Reads a retrain folder (``retrain.models``, or MODELS): which version serves (champion.json), every
version with its decision (how it was made, promoted or kept, its test P-AUCCC against the
champion's at the time), the targets onboarded along the way, and the nightly job's watermark
(``nightly.output``): how many query sets are done and when the last night succeeded. Writes
nothing; ``--json`` prints the same record as JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field

from router_core.config import AppConfig
from router_core.errors import ConfigError, DataError
from router_core.model_index import read_champion, versions
from router_core.storage import Storage, join

from .common import format_table, storage_from
from .nightly import WATERMARK, read_watermark, watermark_uri


@dataclass
class Status:
    models: str
    champion: dict | None
    versions: list[dict] = field(default_factory=list)
    onboarded: list[str] = field(default_factory=list)
    nightly: dict | None = None
    as_json: bool = False


def _day(unix) -> str | None:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if unix else None


def version_row(name: str, d: dict | None, serving: str | None) -> dict:
    """One version's line from its decision.json (None: the folder has none, e.g. a run that crashed)."""
    if d is None:
        return {"version": name, "made_by": "?", "promoted": False, "serving": name == serving, "p_auccc": None,
                "champion_then": None, "new_models": [], "decided": None, "note": "no decision.json"}
    onboard = d.get("via") == "onboard"
    return {"version": name, "made_by": "onboard" if onboard else "retrain", "promoted": bool(d.get("promoted")),
            "serving": name == serving,
            "p_auccc": (d.get("test") or {}).get("p_auccc") if onboard else (d.get("challenger") or {}).get("p_auccc"),
            "champion_then": (d.get("champion") or {}).get("version"),
            "new_models": list((d.get("merge") or {}).get("new_models", [])),
            "decided": _day(d.get("decided_unix")), "note": ""}


def run_status(cfg: AppConfig, models: str | None, nightly: str | None, as_json: bool = False) -> Status:
    models = models or cfg.retrain.models
    if not models:
        raise ConfigError("status: name a retrain folder (MODELS) or set retrain.models")
    storage = storage_from(cfg)
    made = versions(storage, models)
    champion = read_champion(storage, models)
    if champion is None and not made:
        raise DataError(f"{models}: no champion.json and no vNNNN folder (not a retrain folder)")
    st = Status(models, champion.model_dump() if champion else None, as_json=as_json)
    for v in made:
        uri = join(models, v, "decision.json")
        d = json.loads(storage.read_text(uri)) if storage.exists(uri) else None
        st.versions.append(version_row(v, d, champion.version if champion else None))
        if d and d.get("via") == "onboard" and d.get("added"):
            st.onboarded.append(f"{d['target']} ({v}{'' if d.get('promoted') else ', not promoted'})")
    if nightly:  # a nightly.output folder, or its watermark
        nightly = nightly if nightly.endswith(".json") else join(nightly, WATERMARK)
    elif cfg.nightly.watermark or cfg.nightly.output:
        nightly = watermark_uri(cfg)
    st.nightly = _nightly(storage, nightly) if nightly else None
    return st


def _nightly(storage: Storage, watermark: str) -> dict:
    wm = read_watermark(storage, watermark)
    done = wm["done"]
    last = max(done.values(), key=lambda v: (v.get("date") or "", v.get("finished_unix") or 0), default={})
    return {"watermark": watermark, "sets_done": len(done), "last_night": last.get("date"),
            "last_model": last.get("model"), "last_success": _day(wm.get("last_success_unix"))}


def print_status(st: Status) -> None:
    if st.as_json:
        print(json.dumps({k: v for k, v in asdict(st).items() if k != "as_json"}, indent=2))
        return
    c = st.champion
    print(f"status of {st.models}: " + (f"champion {c['version']} (test P-AUCCC {c['p_auccc']:.4f}, promoted "
                                        f"{_day(c['promoted_unix']) or 'at an unknown time'}) serves {c['model']}"
                                        if c else "no champion yet"))
    rows = [[("* " if r["serving"] else "  ") + r["version"], r["made_by"],
             "promoted" if r["promoted"] else "kept the champion" if r["champion_then"] else "not promoted",
             f"{r['p_auccc']:.4f}" if r["p_auccc"] is not None else "-", r["champion_then"] or "-",
             ", ".join(r["new_models"]) or "-", r["decided"] or r["note"] or "-"] for r in st.versions]
    if rows:
        print(format_table(["version", "made by", "decision", "test P-AUCCC", "against", "new models", "decided"],
                           rows))
    print("onboarded: " + (", ".join(st.onboarded) or "none"))
    n = st.nightly
    if n is None:
        print("nightly: no nightly.output set")
    elif not n["sets_done"]:
        print(f"nightly: no query set routed yet ({n['watermark']})")
    else:
        print(f"nightly: {n['sets_done']} query sets done, the last night {n['last_night']} "
              f"(last success {n['last_success']})" + (f", with {n['last_model']}" if n.get("last_model") else ""))
