"""Large models in `make bench` (the report's section 4): one model with large artifact files,
synced, against the OS copying the same bytes (the raw copy) and the least any verified transfer
does (the verified-copy floor); every process's peak memory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.environment import Bench, dagster_home, today, write_config
from benchmarks.runs import materialize_partitions, scan_exports
from benchmarks.sampling import server_peaks
from harness.seeding import seed_production


def cold() -> bool:
    """Flush what earlier items wrote and empty the page cache (where allowed: root), so that each
    copy of the large-model items starts alike: the source read from disk, nothing left to flush."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def verified_copy_floor(files: list[Path], out_dir: Path, back_dir: Path) -> float:
    """The least any verified transfer of `files` does: copy them out and back (`cp`), SHA-256
    them once on each side, `sync`. Seconds."""
    out_dir.mkdir(parents=True)
    back_dir.mkdir(parents=True)
    cold()
    started = time.perf_counter()
    for source in files:
        out, back = out_dir / source.name, back_dir / source.name
        subprocess.run(["cp", str(source), str(out)], check=True)
        _sha256_file(out)
        subprocess.run(["cp", str(out), str(back)], check=True)
        _sha256_file(back)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started


def bench_large_artifact(bench: Bench, size_bytes: int, folder: Path, files: int = 1) -> dict:
    """Items 4 and 5: one model with large artifact files (`files` of them, as sharded weights),
    against the OS copying the same bytes (raw copy: `cp` out and back, `sync`) and the
    verified-copy floor (the same, and SHA-256 once on each side)."""
    tag = f"big{files}"
    source, market = bench.server(f"{tag}_src"), bench.server(f"{tag}_market")
    bench.start_all([source, market])
    seed_production(source.uri, [f"{tag}_model"], blob_bytes=size_bytes, blob_files=files)
    blobs = sorted(source.artifact_root.rglob("weights*.bin"))
    raw_seconds = _raw_copy(
        blobs, folder / f"{tag}_raw_external", market.artifact_root / f"{tag}_raw_copy"
    )
    floor_seconds = verified_copy_floor(
        blobs, folder / f"{tag}_floor_external", market.artifact_root / f"{tag}_floor"
    )
    config = write_config(
        folder / f"{tag}.yaml",
        folder / f"{tag}_storage",
        market,
        [{"name": tag, "tracking_uri": source.uri, "production": {"stage": "Production"}}],
    )
    home = dagster_home(folder / tag)
    cold()
    started = time.perf_counter()
    _, runs = materialize_partitions(config, home, [f"{today().isoformat()}|{tag}"], parallel=1)
    subprocess.run(["sync"], check=True)  # as the copies: until the bytes are on disk
    wall = time.perf_counter() - started
    peaks = {"dagster run process": runs[0]["peak_rss_mb"], **server_peaks([source, market])}
    mb = size_bytes / 1e6
    scan = scan_exports(folder / f"{tag}_storage")
    row = {
        "artifact_mb": round(mb),
        "files": files,
        "raw_copy_seconds": round(raw_seconds, 2),
        "floor_seconds": round(floor_seconds, 2),
        "marketplace_seconds": round(wall, 2),
        "marketplace_mb_per_s": round(mb / wall, 1),
        "floor_mb_per_s": round(mb / floor_seconds, 1),
        "throughput_ratio": round(raw_seconds / wall, 3),
        "floor_ratio": round(wall / floor_seconds, 3),
        "marketplace_step_seconds": round(runs[0]["step_seconds"], 2),
        "step_floor_ratio": round(runs[0]["step_seconds"] / floor_seconds, 3),
        "run_peak_rss_mb": runs[0]["peak_rss_mb"],
        "peak_rss_mb": max(peaks.values()),
        "peak_rss_mb_by_process": peaks,
        "scan_seconds": round(scan["seconds"], 3),
        "page_cache_dropped": cold(),
    }
    print(
        f"  {mb:.0f} MB in {files} file(s): raw copy {raw_seconds:.1f} s, floor "
        f"{floor_seconds:.1f} s, marketplace {wall:.1f} s, peak {row['peak_rss_mb']} MB",
        file=sys.__stdout__,
        flush=True,
    )
    bench.stop_all()
    return row


def _raw_copy(files: list[Path], out_dir: Path, back_dir: Path) -> float:
    """`cp` of the files out to external storage and back into the marketplace's artifact root,
    `sync`."""
    out_dir.mkdir(parents=True)
    back_dir.mkdir(parents=True)
    cold()
    started = time.perf_counter()
    for source in files:
        subprocess.run(["cp", str(source), str(out_dir / source.name)], check=True)
        subprocess.run(["cp", str(out_dir / source.name), str(back_dir / source.name)], check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started
