"""The 4 GB proof in one prepared run: Qwen3-ASR and Qwen3-TTS served together within a
4096 MiB card's limits, on a GPU machine lent for minutes.

That machine has no network, and its Python 3.12 lacks (or has unusable versions of) the
packages the Qwen engines need, so everything is prepared here and carried there:

* ``prepare`` (here, with network): downloads the cp312 manylinux wheels of our pinned
  runtime that the machine lacks into ``.gpu-proof/wheels``, stands in for packages that
  are only imported, never used, copies real speech beside them, checks that every
  requirement is met by that set plus the machine's own packages, and that what travels
  stays well under 64 MiB.
* ``run`` (there, or ``--device cpu --size tiny`` anywhere): builds full-size
  random-weight checkpoints from the released configs (memory and speed do not depend on
  the values), asks the product's planner what it picks for each card, then runs each
  configuration in its own process with its own timeout: the product's start-up path,
  both servers on 127.0.0.1, real Wyoming traffic, the allocator capped to the card.
  Every configuration's row is rewritten under ``$OUT`` after each stage, so a killed
  run still returns what it measured.

    script/gpu-proof --prepare                   # here
    script/gpu-proof                             # on the GPU machine (carry .gpu-proof)
    script/gpu-proof --device cpu --size tiny    # dry run anywhere
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import wave
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "script"))

from bench_gpu import SENTENCE, fmt  # noqa: E402

CARRY = ROOT / ".gpu-proof"
WHEELS = CARRY / "wheels"
STUBS = CARRY / "stubs"
SPEECH = CARRY / "speech"
MANIFEST = CARRY / "manifest.json"
DEBIAN_SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox")
MIB = 2**20
GIB = 2**30
DISPLAY_RESERVE = int(0.15 * GIB)  # what a desktop keeps on a real card
SIZE_LIMIT = 48 * MIB  # everything that travels; the hard limit is 64 MiB
UPLOAD_SECONDS = 300.0  # MAX_AUDIO_SECONDS, the longest upload the product accepts
FRAME_SECONDS = 0.08  # one 12 Hz codec frame
RATE = 16000
OURS = "wyoming-opentalker"

# ---------------------------------------------------------------------------- prepare
# The GPU machine's Python packages (its image's list, read 2026-11) and the versions
# known for some of them. A package whose version is not known there satisfies a loose
# requirement (it is assumed, and listed as such) but never an exact pin.
MACHINE_PACKAGES = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
    attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama
    contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x
    cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
    fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
    jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader
    lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
    nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
    packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests
    rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
    tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
    typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
    wrapt xarray xxhash yarl zipp""".split()
)
MACHINE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "onnxruntime": "1.30.0",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torchaudio": "2.11.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
# Our exact pins that the machine's own builds replace (binary builds tied to its CUDA).
RELAXED = {
    "torch": "the machine's CUDA 13 build is the one that drives its GPU",
    "numpy": "the machine's torch, scipy and numba are built against its numpy",
}
# Not imported by the start-up path the proof runs (HTTP API, zeroconf and Supervisor
# discovery are off), and too large to carry for nothing.
LEFT_OUT = {
    "av": "media files for the HTTP API only (a 40 MB wheel)",
    "zeroconf": "LAN discovery only, off in the proof",
    "aiohttp": "HTTP API and Supervisor discovery only; the machine has its own",
}
# Required by qwen-asr / qwen-tts, which the product installs with --no-deps.
WAIVED = {
    "gradio": "demo only",
    "flask": "demo only",
    "pytz": "demo only",
    "qwen-omni-utils": "demo only",
    "sox": "qwen-tts' 25 Hz tokenizer only; the engine stands in for it when missing",
}
WAIVED_PAIRS = {
    ("qwen-tts", "transformers"): "qwen-tts pins 4.57.3; it runs on our 4.57.6",
}
# Imported at import time, never called on the product's path: a small module carried
# instead of the package.
STAND_INS = {
    "nagisa": "qwen-asr imports it for its forced aligner, which the product never calls "
    "(its wheels with DyNet are 28 MB)",
}
_STAND_IN_SOURCE = '''"""Stand-in for {name}, carried to the GPU machine instead of the package:
{why}. Any use raises ImportError."""


def __getattr__(attr: str) -> object:
    if attr.startswith("__"):
        raise AttributeError(attr)
    raise ImportError(f"{name}.{{attr}} is a stand-in on this machine")
'''
# Native libraries for other CUDA / ROCm versions than the machine's CUDA 13.
TRIM = {"bitsandbytes": re.compile(r"libbitsandbytes_(?!cuda13|cpu)\w+\.so$")}
MARKER_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_release": "",
    "platform_version": "",
    "os_name": "posix",
    "extra": "",
}
PLATFORMS = (
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{n}_x86_64" for n in range(5, 40)),
)
# Real speech of 5-30 s each from Debian's pocketsphinx-testdata (two short ones joined).
SPEECH_CLIPS = {
    "librivox-0870": ("0870",),
    "librivox-0890": ("0890",),
    "librivox-0920": ("0920",),
    "librivox-0880-0930": ("0880", "0930"),
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def our_requirements(extras: Iterable[str]) -> list[Any]:
    """Our runtime pins: core, the given extras (self-references followed) and the
    packages installed with --no-deps."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonical(req.name) == OURS:
                pending += sorted(req.extras)
            else:
                lines.append(line)
    nodeps = (ROOT / "requirements" / "qwen-nodeps.txt").read_text().splitlines()
    lines += [line.split("#")[0].strip() for line in nodeps if line.split("#")[0].strip()]
    lines += quantisation_pins()
    return [Requirement(line) for line in lines]


def quantisation_pins() -> list[str]:
    """The weight-only quantisation libraries at the versions the product names: the
    planner offers int8 / nf4 only where they import, so the machine needs them."""
    try:
        from wyoming_opentalker import quant
    except ImportError:
        return []
    pins = {"torchao": "TORCHAO_VERSION", "bitsandbytes": "BITSANDBYTES_VERSION"}
    return [
        f"{name}=={getattr(quant, attr)}" for name, attr in pins.items() if hasattr(quant, attr)
    ]


def _exact(req: Any) -> bool:
    return any(spec.operator in ("==", "===") for spec in req.specifier)


def how_met(req: Any, parent: str, carried: Mapping[str, str]) -> str | None:
    """How the machine plus the carried set meet ``req`` of ``parent``; None if unmet."""
    name = canonical(req.name)
    if parent == OURS and name in RELAXED:
        return f"machine's own: {RELAXED[name]}"
    reason = (
        WAIVED_PAIRS.get((parent, name))
        or WAIVED.get(name)
        or LEFT_OUT.get(name)
        or STAND_INS.get(name)
    )
    if reason:
        prefix = "stand-in" if name in STAND_INS else "left out"
        return f"{prefix}: {reason}"
    if name in carried:
        return "carried" if req.specifier.contains(carried[name], prereleases=True) else None
    if name not in MACHINE_PACKAGES:
        return None
    version = MACHINE_VERSIONS.get(name)
    if version is None:
        return None if _exact(req) else "machine's, version not listed (assumed)"
    return f"machine's {version}" if req.specifier.contains(version, prereleases=True) else None


def wheel_requirements(path: Path) -> tuple[str, str, list[Any]]:
    """(name, version, requirements that apply on the machine) from a wheel's METADATA."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as wheel:
        metadata = next(
            n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        )
        text = wheel.read(metadata).decode("utf-8", "replace")
    headers = text.split("\n\n", 1)[0].splitlines()
    name = next(line.split(":", 1)[1].strip() for line in headers if line.startswith("Name:"))
    version = next(line.split(":", 1)[1].strip() for line in headers if line.startswith("Version:"))
    reqs = []
    for line in headers:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(MARKER_ENV):
                reqs.append(req)
    return canonical(name), version, reqs


def supported_tags() -> set[Any]:
    from packaging import tags

    interpreter = tags.cpython_tags((3, 12), abis=["cp312", "abi3", "none"], platforms=PLATFORMS)
    pure = tags.compatible_tags((3, 12), "cp312", PLATFORMS)
    return {*interpreter, *pure}


def check_closure(wheel_dir: Path, stub_dir: Path, ours: list[Any] | None = None) -> dict[str, Any]:
    """Check, from the files alone, that the carried wheels plus the machine's packages
    meet every requirement: ours and each wheel's Requires-Dist; one version a package;
    every wheel installable on CPython 3.12 / manylinux x86-64."""
    from packaging.utils import parse_wheel_filename

    ours = our_requirements(("qwen",)) if ours is None else ours
    problems: list[str] = []
    carried: dict[str, str] = {}
    requirements: list[tuple[str, Any]] = [(OURS, req) for req in ours]
    tags = supported_tags()
    for path in sorted(wheel_dir.glob("*.whl")):
        name, version, reqs = wheel_requirements(path)
        if name in carried:
            problems.append(f"two versions of {name}: {carried[name]} and {version}")
        carried[name] = version
        try:
            wheel_tags = set(parse_wheel_filename(path.name)[3])
        except ValueError as err:
            wheel_tags = set()
            problems.append(f"{path.name}: {err}")
        if not tags & wheel_tags:
            problems.append(f"{path.name} does not install on CPython 3.12 manylinux x86-64")
        requirements += [(name, req) for req in reqs]
    met: dict[str, str] = {}
    for parent, req in requirements:
        how = how_met(req, parent, carried)
        if how is None:
            have = carried.get(canonical(req.name)) or MACHINE_VERSIONS.get(canonical(req.name))
            problems.append(f"{parent} needs {req}: " + (f"have {have}" if have else "missing"))
        elif how != "carried":
            met.setdefault(canonical(req.name), how)
    for name in STAND_INS:
        if name in met and not (stub_dir / name / "__init__.py").is_file():
            problems.append(f"stand-in for {name} is missing from {stub_dir}")
    return {"ok": not problems, "carried": carried, "met_otherwise": met, "problems": problems}


def pip_download(specs: list[str], dest: Path) -> None:
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    argv += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    argv += [arg for plat in PLATFORMS for arg in ("--platform", plat)]
    subprocess.run([*argv, "-d", str(dest), *specs], check=True)


def pick_version(req: Any) -> str:
    """The version our tested environment has, if it fits; else the newest that does."""
    from packaging.utils import parse_wheel_filename

    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        version = importlib.metadata.version(req.name)
        if req.specifier.contains(version, prereleases=True):
            return version
    if _exact(req):
        return next(str(spec.version) for spec in req.specifier if spec.operator == "==")
    with tempfile.TemporaryDirectory() as tmp:
        pip_download([str(req).split(";")[0]], Path(tmp))
        return str(parse_wheel_filename(next(Path(tmp).glob("*.whl")).name)[1])


def trim_wheel(path: Path, drop: re.Pattern[str]) -> int:
    """Remove members matching ``drop`` (and their RECORD lines); return bytes saved."""
    before = path.stat().st_size
    with zipfile.ZipFile(path) as src:
        gone = {m.filename for m in src.infolist() if drop.search(m.filename)}
        if not gone:
            return 0
        partial = path.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as dst:
            for member in src.infolist():
                if member.filename in gone:
                    continue
                data = src.read(member.filename)
                if member.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    kept = [line for line in lines if line.split(",", 1)[0] not in gone]
                    data = ("\n".join(kept) + "\n").encode()
                dst.writestr(member, data)
    os.replace(partial, path)
    return before - path.stat().st_size


def resolve_and_download(extras: Iterable[str], dest: Path) -> dict[str, Any]:
    """Carry each package the machine cannot supply, following what every carried wheel
    requires in turn; one download per round."""
    from packaging.utils import parse_wheel_filename

    carried: dict[str, str] = {}
    why: dict[str, str] = {}
    queue: list[tuple[str, Any]] = [(OURS, req) for req in our_requirements(extras)]
    problems: list[str] = []
    while queue:
        wanted: dict[str, str] = {}
        for parent, req in queue:
            if req.marker is not None and not req.marker.evaluate(MARKER_ENV):
                continue
            name = canonical(req.name)
            if how_met(req, parent, {**carried, **wanted}) is not None:
                continue
            if name in carried or name in wanted:
                have = carried.get(name, wanted.get(name))
                problems.append(f"{parent} needs {req}, carried {have}")
                continue
            wanted[name] = pick_version(req)
            why[name] = f"{parent} needs {req}"
        queue = []
        if not wanted:
            break
        with tempfile.TemporaryDirectory() as tmp:
            pip_download([f"{name}=={version}" for name, version in wanted.items()], Path(tmp))
            for path in Path(tmp).glob("*.whl"):
                shutil.move(str(path), dest / path.name)
        carried.update(wanted)
        for path in dest.glob("*.whl"):
            name = canonical(str(parse_wheel_filename(path.name)[0]))
            if name in wanted:
                queue += [(name, req) for req in wheel_requirements(path)[2]]
    return {"why": why, "problems": problems}


def compose_speech(source: Path = DEBIAN_SPEECH) -> dict[str, bytes]:
    """16 kHz mono 16-bit PCM of each clip in SPEECH_CLIPS."""
    clips = {}
    for name, parts in SPEECH_CLIPS.items():
        pcm = b""
        for part in parts:
            with wave.open(str(source / f"sense_and_sensibility_01_austen_64kb-{part}.wav")) as w:
                assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (RATE, 2, 1)
                pcm += w.readframes(w.getnframes())
        clips[name] = pcm
    return clips


def load_speech(folder: Path = SPEECH) -> dict[str, bytes]:
    """The carried clips, or the same ones straight from Debian's test data."""
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        return compose_speech()
    clips = {}
    for path in files:
        with wave.open(str(path)) as w:
            clips[path.stem] = w.readframes(w.getnframes())
    return clips


def find_python312() -> str | None:
    """A CPython 3.12 here, to install the set the way the machine will."""
    candidates = [shutil.which("python3.12"), *sorted(glob.glob(os.path.expanduser(
        "~/.pyenv/versions/3.12*/bin/python3.12")))]  # fmt: skip
    uv = shutil.which("uv")
    if uv:
        found = subprocess.run([uv, "python", "find", "3.12"], capture_output=True, text=True)
        candidates.append(found.stdout.strip() or None)
    for candidate in filter(None, candidates):
        probe = [candidate, "-c", "import sys, pip; assert sys.version_info[:2] == (3, 12)"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return candidate
    return None


def install_check(python: str, wheel_dir: Path, stub_dir: Path) -> str:
    """Install the set offline into a temporary target with a Python 3.12; the names and
    versions installed must be the carried ones."""
    with tempfile.TemporaryDirectory() as target:
        argv = [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
        argv += ["--no-compile", "--disable-pip-version-check", "--target", target]
        subprocess.run([*argv, *map(str, sorted(wheel_dir.glob("*.whl")))], check=True)
        shutil.copytree(stub_dir, target, dirs_exist_ok=True)
        listing = (
            "import importlib.metadata as m, json, sys; print(json.dumps(sorted("
            "(d.metadata['Name'], d.version) for d in m.distributions(path=[sys.argv[1]]))))"
        )
        out = subprocess.run([python, "-c", listing, target], capture_output=True, text=True)
        installed = json.loads(out.stdout)
    return f"{len(installed)} distributions installed offline with {python}"


def tree_bytes() -> int:
    """What travels besides the carried folder: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum((ROOT / os.fsdecode(name)).stat().st_size for name in listed if name and
               (ROOT / os.fsdecode(name)).is_file())  # fmt: skip


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def prepare(args: argparse.Namespace) -> int:
    """Fill .gpu-proof/ with what the GPU machine lacks, and check it."""
    shutil.rmtree(CARRY, ignore_errors=True)
    for folder in (WHEELS, STUBS, SPEECH):
        folder.mkdir(parents=True)
    extras = tuple(args.extras.split(","))
    resolved = resolve_and_download(extras, WHEELS)
    trimmed = {}
    for path in WHEELS.glob("*.whl"):
        name = canonical(path.name.split("-")[0])
        if name in TRIM:
            trimmed[path.name] = trim_wheel(path, TRIM[name])
    for name, why in STAND_INS.items():
        (STUBS / name).mkdir()
        (STUBS / name / "__init__.py").write_text(_STAND_IN_SOURCE.format(name=name, why=why))
    for name, pcm in compose_speech().items():
        with wave.open(str(SPEECH / f"{name}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(pcm)
    check = check_closure(WHEELS, STUBS, our_requirements(extras))
    check["problems"] = resolved["problems"] + check["problems"]
    python = find_python312()
    installed = install_check(python, WHEELS, STUBS) if python else "no Python 3.12 here"
    carried_bytes = folder_bytes(CARRY)
    total = carried_bytes + tree_bytes()
    wheels = [
        {
            "file": path.name,
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "why": resolved["why"].get(canonical(path.name.split("-")[0]), ""),
        }
        for path in sorted(WHEELS.glob("*.whl"))
    ]
    speech = sorted(SPEECH.glob("*.wav"))
    manifest = {
        "prepared": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wheels": wheels,
        "trimmed_bytes": trimmed,
        "met_otherwise": check["met_otherwise"],
        "stand_ins": STAND_INS,
        "left_out": LEFT_OUT,
        "speech": {p.name: round((p.stat().st_size - 44) / 2 / RATE, 2) for p in speech},
        "install_check": installed,
        "problems": check["problems"],
        "carried_bytes": carried_bytes,
        "travel_bytes": total,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=2))
    for wheel in wheels:
        print(f"  {wheel['bytes'] / MIB:6.2f} MiB  {wheel['file']}")
    assumed = sorted(n for n, how in check["met_otherwise"].items() if "assumed" in how)
    print(f"stand-ins: {', '.join(STAND_INS)}; left out: {', '.join(LEFT_OUT)}")
    print(f"the machine's own, version not listed (assumed to fit): {', '.join(assumed)}")
    print(f"speech: {', '.join(f'{k} {v} s' for k, v in manifest['speech'].items())}")
    print(f"install check: {installed}")
    print(f"carried {carried_bytes / MIB:.1f} MiB; with the working tree {total / MIB:.1f} MiB")
    for problem in check["problems"]:
        print(f"PROBLEM: {problem}")
    if total > SIZE_LIMIT:
        print(f"PROBLEM: {total / MIB:.1f} MiB would travel; keep it under {SIZE_LIMIT / MIB:g}")
        return 1
    return 1 if check["problems"] else 0


# ---------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Config:
    """One card the proof emulates: what the planner is told, and the profile's flags."""

    key: str
    label: str
    card_mib: int
    capability: str
    profile: tuple[str, ...] = ()
    # used only when the product's planner cannot be asked
    fallback: Mapping[str, tuple[str, str]] = field(
        default_factory=lambda: {"asr": ("float16", "none"), "tts": ("float16", "none")}
    )


CONFIGS = {
    "1": Config("1", "GTX 1050 Ti defaults (sm_61, 4096 MiB)", 4096, "6.1"),
    "2": Config("2", "GTX 1650 defaults (sm_75, 4096 MiB)", 4096, "7.5"),
    "3": Config(
        "3",
        "24 GB profile (FP32 ASR, chunking off; sm_86)",
        24576,
        "8.6",
        ("--asr-dtype", "float32", "--qwen-asr-max-batch-size", "16", "--tts-chunk-size", "0"),
        {"asr": ("float32", "none"), "tts": ("bfloat16", "none")},
    ),
    # References for the TTS decode loop (not run by default): the GTX 1650 defaults with
    # the lean loop's CUDA graphs off, and with upstream's generate() instead of the loop.
    "4": Config(
        "4", "GTX 1650 defaults, CUDA graphs off", 4096, "7.5", ("--no-qwen-tts-cuda-graphs",)
    ),
    "5": Config(
        "5", "GTX 1650 defaults, upstream generate()", 4096, "7.5", ("--qwen-tts-loop", "upstream")
    ),
}
DEFAULT_CONFIGS = "1,2,3"


class Tee:
    """Lines to stdout and to ``run.log`` under the results folder, from any thread."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)
            self._file.write(line + "\n")
            self._file.flush()


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` at once, so a reader (or a kill) never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    os.replace(partial, path)


class Child:
    """A process in its own group with its output in the log. With ``hold`` it imports
    the heavy libraries, then waits for ``go``: the next configuration imports while the
    current one runs, and touches the GPU only when its turn comes."""

    def __init__(self, argv: list[str], log: Tee, prefix: str, hold: bool = False) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE if hold else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, args=(log, prefix), daemon=True)
        self._reader.start()

    def _pump(self, log: Tee, prefix: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            log(f"{prefix} {line.rstrip()}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write("go\n")
            self.proc.stdin.close()

    def wait(self, timeout: float) -> tuple[int | None, bool]:
        """(exit status, whether it was stopped at ``timeout``)."""
        timed_out = False
        try:
            self.proc.wait(max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        self._reader.join(5)
        return self.proc.returncode, timed_out

    def kill(self) -> None:
        """SIGTERM to the whole group, SIGKILL 5 s later if it is still there."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def build_models(
    folder: Path, size: str, dtype: str, deadline: float, log: Tee
) -> tuple[Path, Path]:
    """Both checkpoints, built at once in two processes (kept for the next run)."""
    paths = {kind: folder / f"{kind}-{size}" for kind in ("asr", "tts")}
    builders = {
        kind: Child(
            [sys.executable, __file__, "build", kind, size, dtype, str(path)],
            log,
            f"[build {kind}]",
        )
        for kind, path in paths.items()
        if not (path / "config.json").exists()
    }
    failed = [kind for kind, child in builders.items() if child.wait(deadline - time.time())[0]]
    if failed:
        raise RuntimeError(f"building the {' and '.join(failed)} checkpoint failed (see run.log)")
    return paths["asr"], paths["tts"]


def build(kind: str, size: str, dtype: str, path: Path) -> None:
    """One random-weight checkpoint, saved in ``dtype`` as the released ones are."""
    import torch

    from tests.qwen_models import build_qwen3_asr, build_qwen3_tts

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    torch.set_default_dtype(getattr(torch, dtype))
    started = time.monotonic()
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    chosen: Any = "full" if size == "full" else "tiny"
    if kind == "asr":
        build_qwen3_asr(partial, size=chosen)
    else:
        build_qwen3_tts(partial, size=chosen)
    os.replace(partial, path)
    print(f"built {size} {kind} in {dtype} in {time.monotonic() - started:.0f} s: {path}")


def ask_planner(config: Config, flags: list[str]) -> tuple[dict[str, Any] | None, str]:
    """The product's own choice for this card: ``wyoming_opentalker plan --json``."""
    argv = [sys.executable, "-m", "wyoming_opentalker", "plan", "--gpu-memory",
            str(config.card_mib), "--compute-capability", config.capability, "--json",
            *flags]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, "fallback: the planner did not answer in 120 s"
    if proc.returncode in (0, 1) and "{" in proc.stdout:
        with contextlib.suppress(ValueError):
            plan = json.loads(proc.stdout[proc.stdout.index("{") :])
            if isinstance(plan, dict) and isinstance(plan.get("needs"), list):
                return plan, "the product's planner"
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1]
    return None, f"fallback: the planner gave exit {proc.returncode}: {tail[:200]}"


def choices(config: Config, plan: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Precision, quantisation and ASR batch per service: the plan's (its resolved
    settings where it reports them), else the config's fallback and the card's default
    batch."""
    from wyoming_opentalker.device import GpuInfo, default_asr_batch_size

    needs = {need.get("service"): need for need in (plan or {}).get("needs", [])}
    resolved = (plan or {}).get("settings") or {}
    chosen: dict[str, dict[str, Any]] = {}
    for service in ("asr", "tts"):
        precision, quantization = config.fallback[service]
        need = needs.get(service) or {}
        chosen[service] = {
            "precision": need.get("precision") or precision,
            "quantization": need.get("quantization") or quantization,
        }
    major, minor = (int(part) for part in config.capability.split("."))
    card = GpuInfo(config.label, (major, minor), config.card_mib * MIB)
    batch = needs.get("asr", {}).get("max_batch_size") or resolved.get("qwen_asr_max_batch_size")
    chosen["asr"]["max_batch_size"] = int(batch or default_asr_batch_size(card))
    chosen["asr"]["batch_from"] = "plan" if batch else "the card's default"
    return chosen


def common_flags(
    config: Config, asr: Path, tts: Path, tts_frames: int, asr_tokens: int | None
) -> list[str]:
    """The settings both the planner and the servers get."""
    flags = ["--asr-engine", "qwen3-asr", "--asr-model", str(asr), "--tts-engine", "qwen3-tts",
             "--tts-model", str(tts), "--local-files-only",
             "--qwen-tts-max-new-tokens", str(tts_frames),
             # the PyTorch engine the GPU runs, also in a dry run on the CPU
             "--qwen-asr-runtime", "torch"]  # fmt: skip
    if asr_tokens:
        flags += ["--qwen-asr-max-new-tokens", str(asr_tokens)]
    return flags + list(config.profile)


def forced_flags(config: Config, chosen: dict[str, dict[str, Any]]) -> list[str]:
    """The planner's choices for the emulated card, forced explicitly (left to itself, the
    product would choose for the GPU it runs on)."""
    from wyoming_opentalker.settings import Settings

    flags = ["--asr-dtype", chosen["asr"]["precision"], "--qwen-asr-quant",
             chosen["asr"]["quantization"], "--tts-dtype", chosen["tts"]["precision"],
             "--qwen-tts-quant", chosen["tts"]["quantization"]]  # fmt: skip
    if "--qwen-asr-max-batch-size" not in config.profile:
        flags += ["--qwen-asr-max-batch-size", str(chosen["asr"]["max_batch_size"])]
    if "--tts-chunk-size" not in config.profile:
        flags += ["--tts-chunk-size", str(Settings().tts_chunk_size)]
    return flags


def plan_configuration(config: Config, flags: list[str], device: str, log: Tee) -> dict[str, Any]:
    """The row a configuration starts from: the planner's choices and the servers' argv."""
    plan, source = ask_planner(config, ["--device", "cuda", *flags])
    chosen = choices(config, plan)
    log(f"[plan {config.key}] {source}: {json.dumps(chosen)}")
    return {
        "config": config.key,
        "label": config.label,
        "card": {"memory_mib": config.card_mib, "capability": config.capability},
        "plan": plan,
        "plan_source": source,
        "choices": chosen,
        "device": device,
        "argv": ["all", "--device", device, *flags, *forced_flags(config, chosen)],
        "speech": str(SPEECH),
        "status": "not started",
    }


def finish_row(
    path: Path, rc: int | None, timed_out: bool, timeout: float, elapsed: float
) -> dict[str, Any]:
    """The child's last saved row, with how it ended."""
    row: dict[str, Any] = json.loads(path.read_text())
    row["elapsed_s"] = round(elapsed, 1)
    if timed_out:
        row["status"] = f"killed after {timeout:.0f} s (its share of the budget); rows so far kept"
    elif rc != 0:
        row["status"] = f"exited {rc}" + (f": {row['error']}" if row.get("error") else "")
    elif row.get("error"):
        row["status"] = "error: " + row["error"]
    else:
        skipped = [k[:-2] for k, v in row.get("stages", {}).items() if isinstance(v, str)]
        row["status"] = f"partial: {', '.join(skipped)} skipped (time budget)" if skipped else "ok"
    write_json(path, row)
    return row


def run(args: argparse.Namespace) -> int:
    """Build, plan, then one child process per configuration; results as they come."""
    started = float(os.environ.get("GPU_PROOF_STARTED") or time.time())
    deadline = started + args.budget
    keys = [key.strip() for key in args.configs.split(",") if key.strip()]
    unknown = [key for key in keys if key not in CONFIGS]
    if unknown or not keys:
        raise SystemExit(f"gpu-proof: configurations are {', '.join(CONFIGS)}, not {unknown}")
    default_out = ROOT / "bench-results" / f"gpu-proof-{args.device.replace(':', '')}-{args.size}"
    out = Path(args.out or os.environ.get("OUT") or default_out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.jsonl", "results.json", "results.md", "run.log"):
        (out / stale).unlink(missing_ok=True)
    log = Tee(out / "run.log")
    models = Path(args.models or Path(tempfile.gettempdir()) / "gpu-proof-models")
    tiny = args.size == "tiny"
    # Random weights never emit end-of-speech: every chunk runs to its cap. 320 frames
    # (25.6 s, about 100 characters spoken) keeps three configurations within the budget;
    # the talker's KV for the frames left out is ~35 MiB in 16-bit.
    tts_frames = args.tts_frames or (96 if tiny else 320)
    asr_tokens = args.asr_tokens or (96 if tiny else None)  # None: the product's default
    dtype = args.build_dtype or ("float32" if tiny else "bfloat16")
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "host": platform.node(),
        "python": platform.python_version(),
        "device": args.device,
        "size": args.size,
        "budget_s": args.budget,
        "checkpoint_dtype": dtype,
        "tts_max_new_tokens": tts_frames,
        "asr_max_new_tokens": asr_tokens or "product default",
        "display_reserve_mib": DISPLAY_RESERVE / MIB,
    }
    gpus = (
        nvidia_smi("--query-gpu=name,driver_version,memory.total") if args.device != "cpu" else []
    )
    if gpus:
        meta["gpu"] = {"name": gpus[0][0], "driver": gpus[0][1], "memory_mib": gpus[0][2]}
    if MANIFEST.exists():
        meta["wheels"] = [w["file"] for w in json.loads(MANIFEST.read_text())["wheels"]]
    log(f"gpu-proof: {args.size} checkpoints on {args.device}, {args.budget:.0f} s budget")

    def spawn(key: str) -> Child:
        argv = [sys.executable, __file__, "child", str(out / f"config-{key}.json")]
        return Child(argv, log, f"[config {key}]", hold=True)

    waiting = spawn(keys[0])  # imports while the checkpoints are built
    rows: list[dict[str, Any]] = []
    try:
        asr, tts = build_models(models, args.size, dtype, deadline, log)
        meta["build_done_s"] = round(time.time() - started, 1)
        specs = {  # the planner reads config files and tensor headers only: quick
            key: plan_configuration(
                CONFIGS[key],
                common_flags(CONFIGS[key], asr, tts, tts_frames, asr_tokens),
                args.device,
                log,
            )
            for key in keys
        }
        for index, key in enumerate(keys):
            timeout = max(10.0, (deadline - time.time()) / (len(keys) - index))
            path = out / f"config-{key}.json"
            write_json(path, {**specs[key], "deadline": time.time() + timeout - 8})
            child, began = waiting, time.time()
            child.go()
            if index + 1 < len(keys):
                waiting = spawn(keys[index + 1])
            rc, timed_out = child.wait(timeout)
            rows.append(finish_row(path, rc, timed_out, timeout, time.time() - began))
            with (out / "results.jsonl").open("a", encoding="utf-8") as jsonl:
                jsonl.write(json.dumps(rows[-1], ensure_ascii=False) + "\n")
            meta["elapsed_s"] = round(time.time() - started, 1)
            write_results(out, meta, rows)
    except Exception as err:  # still leave a report saying what stopped the run
        meta["error"] = one_line(err)
        log(f"gpu-proof: stopped: {meta['error']}")
        write_results(out, meta, rows)
        return 1
    finally:
        waiting.kill()
    log(markdown(meta, rows))
    log(f"results: {out}/results.md, results.json, results.jsonl, config-*.json, run.log")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


# ---------------------------------------------------------------------------- one config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nvidia_smi(query: str) -> list[list[str]]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[part.strip() for part in line.split(",")] for line in out.splitlines() if line]


def smi_process_mib() -> float | None:
    """This process's GPU memory as nvidia-smi lists it (the only process, if the PIDs
    it shows are another namespace's)."""
    apps = [row for row in nvidia_smi("--query-compute-apps=pid,used_memory") if len(row) == 2]
    mine = [row for row in apps if row[0] == str(os.getpid())] or (apps if len(apps) == 1 else [])
    with contextlib.suppress(ValueError, IndexError):
        return float(mine[0][1])
    return None


class Meter:
    """Memory as the allocator, the driver (mem_get_info) and nvidia-smi see it. A thread
    samples it so the peak between stages is caught; on the CPU it follows RSS."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.index = int(device.split(":", 1)[1]) if ":" in device else 0
        used = nvidia_smi("--query-gpu=memory.used") if self.cuda else []
        # what others hold before this process touches CUDA (the context is ours)
        self.baseline = float(used[self.index][0]) * MIB if len(used) > self.index else 0.0
        self.others = nvidia_smi("--query-compute-apps=pid,used_memory") if self.cuda else []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        self.peak_process = 0.0
        self.peak_context = 0.0
        self.peak_smi: float | None = None

    def _torch(self) -> Any:
        import torch

        return torch

    def process_bytes(self) -> float:
        if not self.cuda:
            with open("/proc/self/statm", encoding="ascii") as statm:
                return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        free, total = self._torch().cuda.mem_get_info(self.index)
        return float(total - free - self.baseline)

    def open_context(self, card_bytes: int) -> dict[str, float]:
        """Start CUDA and load cuBLAS, measure the context, then cap the allocator so that
        cap + context = the card less the display reserve."""
        torch = self._torch()
        device = torch.device("cuda", self.index)
        for dtype in (torch.float16, torch.float32):
            probe = torch.ones(256, 256, device=device, dtype=dtype)
            (probe @ probe).sum().item()
        del probe
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        context = self.process_bytes() - torch.cuda.memory_reserved(device)
        total = torch.cuda.get_device_properties(device).total_memory
        cap = card_bytes - DISPLAY_RESERVE - context
        torch.cuda.set_per_process_memory_fraction(max(0.0, cap / total), device)
        return {
            "gpu": torch.cuda.get_device_name(device),
            "gpu_total_mib": total / MIB,
            "baseline_mib": self.baseline / MIB,
            "other_processes_at_start": self.others,
            "context_start_mib": context / MIB,
            "cap_mib": cap / MIB,
            "cap_plus_context_mib": (cap + context) / MIB,
        }

    def snapshot(self) -> dict[str, float | None]:
        if not self.cuda:
            return {"rss_mib": self.process_bytes() / MIB}
        torch = self._torch()
        reserved = torch.cuda.memory_reserved(self.index)
        process = self.process_bytes()
        smi = smi_process_mib()
        return {
            "allocated_mib": torch.cuda.memory_allocated(self.index) / MIB,
            "reserved_mib": reserved / MIB,
            "process_mib": process / MIB,
            "context_mib": (process - reserved) / MIB,
            "nvidia_smi_mib": smi,
        }

    def _sample(self) -> None:
        last_smi = 0.0
        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):
                process = self.process_bytes()
                self.peak_process = max(self.peak_process, process)
                if self.cuda:
                    reserved = self._torch().cuda.memory_reserved(self.index)
                    self.peak_context = max(self.peak_context, process - reserved)
                    if time.monotonic() - last_smi >= 1.0:
                        last_smi = time.monotonic()
                        smi = smi_process_mib()
                        if smi is not None:
                            self.peak_smi = max(self.peak_smi or 0.0, smi)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sample, name="meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def stage_peak(self) -> dict[str, float | None]:
        """Peaks since the last call (then reset): allocator, driver, nvidia-smi."""
        process = max(self.peak_process, self.process_bytes())
        peak: dict[str, float | None] = {"process_mib": process / MIB}
        if self.cuda:
            torch = self._torch()
            peak.update(
                allocated_mib=torch.cuda.max_memory_allocated(self.index) / MIB,
                reserved_mib=torch.cuda.max_memory_reserved(self.index) / MIB,
                context_mib=self.peak_context / MIB,
                nvidia_smi_mib=self.peak_smi,
            )
            torch.cuda.reset_peak_memory_stats(self.index)
        self._reset()
        return peak


class LogWatch(logging.Handler):
    """Takes a memory snapshot the moment the product logs that a service is ready (the
    ASR loads before the TTS does), and counts out-of-memory warnings."""

    def __init__(self, meter: Meter, memory: dict[str, Any], save: Callable[[], None]) -> None:
        super().__init__(logging.INFO)
        self.meter, self.memory, self.save = meter, memory, save
        self.oom_lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for kind in ("ASR", "TTS"):
            if message.startswith(f"{kind} ready"):
                self.memory[f"after_{kind.lower()}"] = self.meter.snapshot()
                self.save()
        lower = message.lower()
        if record.levelno >= logging.WARNING and "out of" in lower and "memory" in lower:
            self.oom_lines += 1


def one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def is_oom(error: Any) -> bool:
    text = json.dumps(error).lower()
    return "out-of-memory" in text or "out of memory" in text


async def traffic(
    ports: dict[str, int], clips: dict[str, bytes], row: dict[str, Any], save: Callable[[], None]
) -> None:
    """Four ASR requests (real speech) and two TTS requests (100 and 200 Chinese
    characters) at once, each answer kept as soon as it arrives."""
    from wyoming_opentalker.client import synthesize, transcribe

    remaining = row["deadline"] - time.time()

    async def asr_one(name: str, pcm: bytes) -> None:
        entry: dict[str, Any] = {"clip": name, "seconds": len(pcm) / 2 / RATE}
        try:
            result = await asyncio.wait_for(transcribe(ports["asr"], pcm, language="en"), remaining)
            if result.event.type == "error":
                entry["error"] = result.event.data
            else:
                entry.update(latency_s=result.latency, text=result.text[:80])
                entry["rtf"] = result.latency / entry["seconds"]
        except Exception as err:
            entry["error"] = one_line(err)
        row["asr"]["requests"].append(entry)
        save()

    async def tts_one(chars: int) -> None:
        text = (SENTENCE * (chars // len(SENTENCE) + 1))[:chars]
        entry: dict[str, Any] = {"chars": chars}
        try:
            result = await asyncio.wait_for(synthesize(ports["tts"], text), remaining)
            errors = [event.data for event in result.events if event.type == "error"]
            entry.update(ttfa_s=result.first_chunk_at, total_s=result.done_at)
            entry.update(audio_s=result.seconds, frames=round(result.seconds / FRAME_SECONDS))
            entry["rtf"] = result.done_at / result.seconds if result.seconds else None
            if errors:
                entry["error"] = errors[0]
        except Exception as err:
            entry["error"] = one_line(err)
        row["tts"]["requests"].append(entry)
        save()

    await asyncio.gather(
        *(asr_one(name, pcm) for name, pcm in list(clips.items())[:4]),
        *(tts_one(chars) for chars in (100, 200)),
    )


async def upload(ports: dict[str, int], clips: dict[str, bytes], row: dict[str, Any]) -> None:
    """One 300 s upload of real speech (the clips over and over): the longest accepted."""
    from wyoming_opentalker.client import transcribe

    joined = b"".join(clips.values())
    size = int(UPLOAD_SECONDS * RATE) * 2
    pcm = (joined * (size // len(joined) + 1))[:size]
    entry: dict[str, Any] = {"seconds": UPLOAD_SECONDS}
    try:
        result = await asyncio.wait_for(
            transcribe(ports["asr"], pcm, language="en"), row["deadline"] - time.time()
        )
        if result.event.type == "error":
            entry["error"] = result.event.data
        else:
            entry.update(latency_s=result.latency, rtf=result.latency / UPLOAD_SECONDS)
            entry["text_chars"] = len(result.text)
    except Exception as err:
        entry["error"] = one_line(err)
    row["asr"]["upload"] = entry


def ours_vs_stock(engine: Any, frames_cap: int, deadline: float) -> dict[str, Any]:
    """ms per codec frame: the engine's own synthesis path against upstream's
    ``generate_custom_voice`` on the same loaded model, same text, frames counted from
    the audio each returns. Alternating, best of two each."""
    import torch
    from bench_qwen_tts import frames_for, speak

    frames = frames_for(SENTENCE, frames_cap)
    result: dict[str, Any] = {"text_chars": len(SENTENCE), "max_new_tokens": frames}
    ours: list[float] = []
    stock: list[float] = []
    for _ in range(2):
        if time.time() > deadline:
            result["note"] = "cut short: time budget"
            break
        _, total, seconds = speak(engine, SENTENCE, frames_cap)
        if seconds:
            ours.append(1000 * total / (seconds / FRAME_SECONDS))
            result["ours_frames"] = round(seconds / FRAME_SECONDS)
        try:
            began = time.perf_counter()
            wavs, rate = engine._model.generate_custom_voice(
                text=SENTENCE, speaker="Vivian", language="chinese", max_new_tokens=frames
            )
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            spent = time.perf_counter() - began
            stock_frames = len(wavs[0]) / rate / FRAME_SECONDS
            result["stock_frames"] = round(stock_frames)
            if stock_frames:
                stock.append(1000 * spent / stock_frames)
        except Exception as err:
            result["stock_error"] = one_line(err)
    result["ours_ms_per_frame"] = min(ours) if ours else None
    result["stock_ms_per_frame"] = min(stock) if stock else None
    if ours and stock:
        result["ours_over_stock"] = min(ours) / min(stock)
    return result


def preload() -> None:
    """Import what a configuration needs before its turn; no CUDA is touched. (qwen_tts
    is left to the engine, whose import of it sets up its stand-ins.)"""
    began = time.monotonic()
    try:
        import bench_qwen_tts  # noqa: F401
        import qwen_asr  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import wyoming_opentalker.__main__  # noqa: F401
    except Exception as err:  # start-up will report it where it matters
        logging.warning("preloading failed: %s", one_line(err))
    logging.info(
        "libraries imported in %.1f s; waiting for this configuration's turn",
        time.monotonic() - began,
    )


async def serve_configuration(path: Path) -> None:
    """One configuration in this fresh process: cap, start, load, traffic, measure. The
    row is saved after every stage, and once more if the parent stops this process at
    its time limit (SIGTERM), with the peak of the stage it was in."""
    row: dict[str, Any] = json.loads(path.read_text())  # noqa: ASYNC240 (before any work)
    row.update(status="running", error=None, ooms={"answers": 0, "log_warnings": 0, "load": 0})
    row.update(memory={}, asr={"requests": []}, tts={"requests": []}, stages={})

    def save() -> None:
        write_json(path, row)

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    meter = Meter(row["device"])
    import torch

    row["versions"] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if meter.cuda:
        row["memory"].update(meter.open_context(row["card"]["memory_mib"] * MIB))
    meter.start()
    save()
    from wyoming_opentalker.__main__ import start_services
    from wyoming_opentalker.settings import load_settings

    ports = {"asr": free_port(), "tts": free_port()}
    argv = [*row["argv"], "--asr-uri", f"tcp://127.0.0.1:{ports['asr']}"]
    argv += ["--tts-uri", f"tcp://127.0.0.1:{ports['tts']}"]
    settings = load_settings(argv, {})
    watch = LogWatch(meter, row["memory"], save)
    logging.getLogger("wyoming_opentalker").addHandler(watch)
    clips = load_speech(Path(row["speech"]))
    running = None
    stage = "load"
    began = time.monotonic()
    try:
        try:
            running = await start_services(settings)
        except Exception as err:
            row["error"] = f"start-up failed: {one_line(err)}"
            row["ooms"]["load"] = int(is_oom(str(err)))
            return
        import transformers

        row["versions"]["transformers"] = transformers.__version__
        row["engines"] = {s.kind: s.engine.info.summary() for s in running.services}
        row["memory"].setdefault("after_tts", meter.snapshot())
        stages: list[tuple[str, Callable[[], Any]]] = [
            ("traffic", lambda: traffic(ports, clips, row, save)),
            ("upload", lambda: upload(ports, clips, row)),
            ("compare", lambda: asyncio.to_thread(
                ours_vs_stock, running.tts.engine,
                int(settings.qwen_tts_max_new_tokens or 320), row["deadline"])),
        ]  # fmt: skip
        for name, work in stages:
            if stage:  # the one before ended: its time and peak
                row["stages"][f"{stage}_s"] = round(time.monotonic() - began, 1)
                row["memory"][f"peak_{stage}"] = meter.stage_peak()
                save()
            stage, began = "", time.monotonic()
            if time.time() > row["deadline"] - 5:
                row["stages"][f"{name}_s"] = "skipped: time budget"
                continue
            stage = name
            result = await work()
            if name == "compare":
                row["compare"] = result
        if stage:
            row["stages"][f"{stage}_s"] = round(time.monotonic() - began, 1)
    except asyncio.CancelledError:
        row["error"] = f"stopped at its time limit during {stage or 'the end'}"
        raise
    except Exception as err:
        row["error"] = f"{stage}: {one_line(err)}"
    finally:
        if stage:
            row["memory"][f"peak_{stage}"] = meter.stage_peak()
        meter.stop()
        errors = [r.get("error") for r in row["asr"]["requests"] + row["tts"]["requests"]]
        errors.append(row["asr"].get("upload", {}).get("error"))
        row["ooms"]["answers"] = sum(1 for e in errors if e and is_oom(e))
        row["ooms"]["log_warnings"] = watch.oom_lines
        summarise(row)
        save()
        if running is not None:
            await running.close()


def summarise(row: dict[str, Any]) -> None:
    """The figures the table shows, from the raw entries."""
    memory = row["memory"]
    peaks = [memory[key] for key in memory if key.startswith("peak_")]

    def worst(key: str) -> float | None:
        values = [p[key] for p in peaks if p.get(key) is not None]
        return max(values) if values else None

    memory["peak"] = {key: worst(key) for key in ("reserved_mib", "process_mib", "context_mib",
                                                  "nvidia_smi_mib")}  # fmt: skip
    limit = row["card"]["memory_mib"] - DISPLAY_RESERVE / MIB
    seen = [v for v in (worst("process_mib"), worst("nvidia_smi_mib")) if v is not None]
    if row["device"].startswith("cuda") and seen:
        memory["peak"]["fits_card"] = max(seen) <= limit
        memory["peak"]["limit_mib"] = limit
    rtfs = [r["rtf"] for r in row["asr"]["requests"] if r.get("rtf") is not None]
    row["asr"]["rtf_median"] = statistics.median(rtfs) if rtfs else None
    row["ooms"]["total"] = sum(row["ooms"][k] for k in ("answers", "log_warnings", "load"))


# ---------------------------------------------------------------------------- report


def oom_cell(ooms: dict[str, int] | None) -> str:
    """Failed answers or loads, and the out-of-memory warnings logged (retries)."""
    if not ooms:
        return "-"
    return f"{ooms.get('answers', 0) + ooms.get('load', 0)} ({ooms.get('log_warnings', 0)})"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Two tables: memory per configuration, then speed."""
    lines = [
        *([f"**Run stopped: {meta['error']}**", ""] if meta.get("error") else []),
        f"GPU proof, {meta['size']} checkpoints on {meta['device']} "
        f"({rows[0].get('memory', {}).get('gpu', 'no GPU') if rows else '-'}), "
        f"started {meta['started']}, {meta.get('elapsed_s', '-')} s of {meta['budget_s']:.0f}",
        "",
        "| configuration | ASR | TTS | cap MiB | context MiB start/peak | after ASR MiB "
        "(reserved/process) | after TTS MiB | peak reserved MiB | peak process MiB | "
        "nvidia-smi peak MiB | fits | OOM errors (logged) | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]

    def mib(snapshot: dict[str, Any] | None) -> str:
        if not snapshot:
            return "-"
        if "rss_mib" in snapshot:
            return f"RSS {fmt(snapshot['rss_mib'], '.0f')}"
        reserved, process = snapshot.get("reserved_mib"), snapshot.get("process_mib")
        return f"{fmt(reserved, '.0f')}/{fmt(process, '.0f')}"

    for row in rows:
        memory, chosen = row.get("memory", {}), row.get("choices", {})
        peak = memory.get("peak", {})
        services = [
            f"{chosen.get(s, {}).get('precision', '-')} {chosen.get(s, {}).get('quantization', '')}"
            for s in ("asr", "tts")
        ]
        fits = peak.get("fits_card")
        lines.append(
            f"| {row['config']}. {row['label']} | {services[0]} | {services[1]} | "
            f"{fmt(memory.get('cap_mib'), '.0f')} | {fmt(memory.get('context_start_mib'), '.0f')}/"
            f"{fmt(peak.get('context_mib'), '.0f')} | {mib(memory.get('after_asr'))} | "
            f"{mib(memory.get('after_tts'))} | {fmt(peak.get('reserved_mib'), '.0f')} | "
            f"{fmt(peak.get('process_mib'), '.0f')} | {fmt(peak.get('nvidia_smi_mib'), '.0f')} | "
            f"{'-' if fits is None else ('yes' if fits else 'NO')} | "
            f"{oom_cell(row.get('ooms'))} | {row.get('status', '-')} |"
        )
    lines += [
        "",
        "| configuration | ASR RTF, 4 at once (median) | ASR RTF, 300 s upload | TTS first audio s "
        "(100/200 chars) | TTS RTF (100/200) | ours ms/frame | stock ms/frame | ours/stock |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        asr, tts, compare = row.get("asr", {}), row.get("tts", {}), row.get("compare", {})
        by_chars = {r["chars"]: r for r in tts.get("requests", [])}
        first = "/".join(fmt(by_chars.get(c, {}).get("ttfa_s")) for c in (100, 200))
        rtf = "/".join(fmt(by_chars.get(c, {}).get("rtf")) for c in (100, 200))
        lines.append(
            f"| {row['config']}. {row['label']} | {fmt(asr.get('rtf_median'), '.3f')} | "
            f"{fmt(asr.get('upload', {}).get('rtf'), '.3f')} | {first} | {rtf} | "
            f"{fmt(compare.get('ours_ms_per_frame'), '.1f')} | "
            f"{fmt(compare.get('stock_ms_per_frame'), '.1f')} | "
            f"{fmt(compare.get('ours_over_stock'))} |"
        )
    lines += [
        "",
        "Memory: allocator reserved (torch), process = the GPU's used memory less what was "
        "in use before this process started (mem_get_info), context = process less reserved, "
        "nvidia-smi = its per-process figure. Fits: peak process (and nvidia-smi) within the "
        f"card less a {DISPLAY_RESERVE / MIB:.0f} MiB display reserve. OOM errors: answers or "
        "loads that failed for want of memory; logged: out-of-memory warnings (retries "
        "included). RTF = seconds of work "
        "per second of audio (ASR: audio-stop to transcript). Random weights never stop on "
        "their own: each ASR answer runs to QWEN_ASR_MAX_NEW_TOKENS "
        f"({meta['asr_max_new_tokens']}), each TTS chunk to {meta['tts_max_new_tokens']} "
        "codec frames or the product's own cap, so speeds are upper bounds. The two TTS "
        "requests share one worker: the 200-character one's first audio waits for the "
        "other. Ours vs stock: ms per codec frame of the engine's streaming synthesis and "
        "of upstream's generate_custom_voice on the same loaded model and text. A large "
        "GPU emulates a card's memory and the product's choices for it, not its speed.",
    ]
    return "\n".join(lines)


def write_results(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    write_json(out / "results.json", {"meta": meta, "rows": rows})
    (out / "results.md").write_text(markdown(meta, rows) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download and check what the GPU machine lacks")
    prep.add_argument("--extras", default="qwen", help="our extras whose pins are carried")
    go = sub.add_parser("run", help="build, plan and measure every configuration")
    go.add_argument("--device", default="cuda")
    go.add_argument("--size", choices=("tiny", "full"), default="full")
    go.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"of {', '.join(CONFIGS)}; e.g. 1,2,3,4,5"
    )
    go.add_argument("--budget", type=float, default=285.0, help="seconds for everything")
    go.add_argument("--out", help="results folder (default $OUT, else bench-results/…)")
    go.add_argument("--models", help="checkpoint folder, kept between runs")
    go.add_argument("--tts-frames", type=int, help="most codec frames a TTS chunk (320; tiny 96)")
    go.add_argument("--asr-tokens", type=int, help="most ASR tokens (product's default; tiny 96)")
    go.add_argument("--build-dtype", help="checkpoint storage dtype (default bf16 full, fp32 tiny)")
    child = sub.add_parser("child")
    child.add_argument("spec", type=Path)
    make = sub.add_parser("build")
    make.add_argument("kind", choices=("asr", "tts"))
    make.add_argument("size", choices=("tiny", "full"))
    make.add_argument("dtype")
    make.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "build":
        build(args.kind, args.size, args.dtype, args.path)
        return 0
    if args.command == "child":
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        preload()
        if sys.stdin.readline().strip() != "go":
            return 0  # the run ended before this configuration's turn
        asyncio.run(serve_configuration(args.spec))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
