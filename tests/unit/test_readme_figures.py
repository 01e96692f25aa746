"""The README quotes the demo's figures from one source: docs/demo-summary.json, the summary.json that
`make demo` wrote (copied there with the run's date, code and machine). A figure in the README that
is not the committed run's fails here."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_quotes_the_committed_demo_run():
    summary = json.loads((REPO / "docs/demo-summary.json").read_text())
    readme = (REPO / "README.md").read_text()
    assert f"```\n{summary['last_line']}\n```" in readme  # the demo's real last line, pasted whole
    s = summary["seconds"]
    assert f"On {summary['date']} (a {summary['machine']['cores']}-core" in readme
    assert f"ran in {s['total']:.0f} s (" in readme and f"train {s['train']:.0f} s" in readme
    assert f"test P-AUCCC {summary['test_p_auccc']:.4f}" in readme
    assert f"encoded in {summary['dtype']}" in readme
