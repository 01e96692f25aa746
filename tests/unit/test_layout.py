"""The shape of jobs/: stages compose the core, not each other, and stay short.

A stage is a module that runs one subcommand. It may import the core and the shared Ray wiring
(WIRING), never another stage; only the modules that compose stages (COMPOSERS) import stages."""

import ast
from pathlib import Path

JOBS = Path(__file__).resolve().parents[2] / "jobs"
WIRING = {"runtime", "common", "actors", "extract_pool", "train_workers", "encoding", "progress"}  # Ray pieces and helpers every stage may use
COMPOSERS = {"cli", "pipeline", "nightly", "retrain", "onboard"}  # onboard runs evaluate, as retrain does
MAX_LINES = 250


def jobs_imports(path: Path) -> set[str]:
    """The jobs modules that ``path`` imports (anywhere in it, function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("jobs."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("jobs."))
    return found - {"__init__"}


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(JOBS.glob("*.py")) if p.stem != "__init__"}


def test_stages_import_no_other_stage():
    mods = modules()
    stages = set(mods) - WIRING - COMPOSERS
    bad = {name: sorted(jobs_imports(p) & stages - {name}) for name, p in mods.items() if name not in COMPOSERS}
    assert not {k: v for k, v in bad.items() if v}, f"stage-to-stage imports: {bad}"


def test_the_wiring_imports_no_stage():
    mods = modules()
    stages = set(mods) - WIRING - COMPOSERS
    for name in WIRING & set(mods):
        assert not jobs_imports(mods[name]) & stages, name


def test_every_jobs_module_is_short():
    long = {name: n for name, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_the_import_check_can_fail(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from .train import run_train\n    from . import route\n    import jobs.extract\n")
    assert jobs_imports(p) == {"train", "route", "extract"}
