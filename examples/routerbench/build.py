"""Rebuild the demo's compact RouterBench copy from the full wide CSV.

    .venv/bin/python examples/routerbench/build.py ../shared/data/routerbench-subset/routerbench_wide.csv

writes examples/routerbench/routerbench_compact.csv.gz (README.md beside it says what it holds).
The output is deterministic: rerunning it on the same source gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

from router_core.errors import DataError
from router_core.importers import compact_routerbench

HERE = Path(__file__).resolve().parent
OUT = HERE / "routerbench_compact.csv.gz"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="RouterBench's routerbench_wide.csv (with the response texts)")
    p.add_argument("--out", default=str(OUT), help=f"the compact copy to write (default {OUT})")
    a = p.parse_args(argv)
    try:
        text = Path(a.source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"build.py: error: {a.source}: {e}", file=sys.stderr)
        return 2
    try:
        compact = compact_routerbench(text, Path(a.source).name)
    except DataError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2
    data = gzip.compress(compact.encode("utf-8"), compresslevel=9, mtime=0)
    Path(a.out).write_bytes(data)
    print(f"{a.out}: {len(data) / 1e6:.2f} MB ({len(text) / 1e6:.1f} MB of CSV in, {len(compact) / 1e6:.1f} MB "
          "without the response texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
