"""`status`: the champion, every version with its decision, the onboarded targets and the last night,
from a retrain folder and a nightly watermark as retrain and nightly leave them; --json the same."""

import datetime as dt
import json

from jobs.cli import main
from router_core.model_index import Champion
from router_core.storage import Storage


def _unix(day: int) -> int:
    return int(dt.datetime(2026, 12, day, tzinfo=dt.timezone.utc).timestamp())


def _folder(tmp_path):
    models, routes = tmp_path / "models", tmp_path / "routes"
    decisions = {
        "v0001": {"version": "v0001", "promoted": True, "challenger": {"p_auccc": 0.41}, "decided_unix": _unix(1),
                  "merge": {"new_models": []}},
        "v0002": {"version": "v0002", "promoted": False, "challenger": {"p_auccc": 0.39},
                  "champion": {"version": "v0001", "p_auccc": 0.41}, "decided_unix": _unix(2),
                  "merge": {"new_models": []}},
        "v0003": {"version": "v0003", "via": "onboard", "target": "newcomer-9b", "added": True, "promoted": True,
                  "test": {"p_auccc": 0.44}, "champion": {"version": "v0001", "p_auccc": 0.41},
                  "merge": {"new_models": ["newcomer-9b"]}},
    }
    for v, d in decisions.items():
        (models / v).mkdir(parents=True)
        (models / v / "decision.json").write_text(json.dumps(d))
    (models / "v0004").mkdir()  # a run that crashed before its decision
    (models / "v0004" / "rejects.parquet").write_bytes(b"")
    Champion(version="v0003", model=str(models / "v0003" / "model"), dataset="d", features="f", p_auccc=0.44,
             promoted_unix=_unix(3)).save(Storage(), str(models))
    routes.mkdir()
    (routes / "_watermark.json").write_text(json.dumps({"done": {
        "a.parquet": {"date": "2026-12-01"}, "b.parquet": {"date": "2026-12-03"}}, "last_success_unix": _unix(3) + 9000}))
    return models, routes


def test_status_tells_which_version_serves_how_each_was_made_and_the_last_night(tmp_path, capsys):
    models, routes = _folder(tmp_path)
    assert main(["status", str(models), "--nightly", str(routes)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"status of {models}: champion v0003 (test P-AUCCC 0.4400, promoted 2026-12-03 00:00 UTC)")
    lines = out.splitlines()
    row = {ln.split()[0] if not ln.startswith("*") else ln.split()[1]: ln for ln in lines[2:7]}
    assert "retrain" in row["v0001"] and "promoted" in row["v0001"] and "2026-12-01" in row["v0001"]
    assert "kept the champion" in row["v0002"] and "0.3900" in row["v0002"] and "v0001" in row["v0002"]
    assert row["v0003"].startswith("* v0003") and "onboard" in row["v0003"] and "newcomer-9b" in row["v0003"]
    assert "no decision.json" in row["v0004"]
    assert "onboarded: newcomer-9b (v0003)" in out
    assert "nightly: 2 query sets done, the last night 2026-12-03 (last success 2026-12-03 02:30 UTC)" in out
    assert main(["status", str(models), "--nightly", str(routes), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["champion"]["version"] == "v0003" and [v["version"] for v in doc["versions"]] == [
        "v0001", "v0002", "v0003", "v0004"]
    assert doc["nightly"]["sets_done"] == 2 and doc["onboarded"] == ["newcomer-9b (v0003)"]


def test_status_of_a_folder_that_is_not_a_retrain_folder_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "not a retrain folder" in err and len(err.strip().splitlines()) == 1
    assert main(["status"]) == 2 and "set retrain.models" in capsys.readouterr().err
