"""`make demo` from a checkout with no ../shared beside it: its import and validate stages run on
the compact RouterBench copy that ships with the project (examples/routerbench)."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _checkout(dest):
    """The files a commit of this tree would hold (tracked, and untracked but not ignored)."""
    try:
        ls = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"{REPO} is not a git checkout ({e}): cannot tell its files from build outputs")
    for rel in filter(None, ls):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not part of the clone
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_make_demo_imports_and_validates_the_shipped_data_with_no_shared_folder(tmp_path):
    clone = tmp_path / "fresh" / "prefill-router"
    _checkout(clone)
    assert not (clone.parent / "shared").exists()
    # The Makefile's own demo recipe, stopped after validate; -o: this process's Python stands in
    # for the clone's .venv (setting it up needs the network and minutes).
    r = subprocess.run(["make", "-o", ".venv/.installed", "demo", f"CLI={sys.executable} -m jobs.cli",
                        "DEMO_ARGS=--set pipeline.until=validate"], cwd=clone, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "3178 source rows -> 3178 queries + 0 rejected" in r.stdout, r.stdout[-3000:]
    assert "stopped after validate (pipeline.until)" in r.stdout, r.stdout[-3000:]
    assert "../shared" not in r.stdout
    data = clone / "out" / "demo" / "data"
    assert (data / "queries.parquet").is_file() and (data / "outcomes.parquet").is_file()
    assert not (clone / "out" / "demo" / "features").exists()  # nothing after validate ran
