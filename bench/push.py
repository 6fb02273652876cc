"""`foretell push`, measured in parts. For now the bundling: packing a model folder into its
canonical bundle with its digest, against `tar -cf - -C DIR . | sha256sum` on the same folder,
in the same run.

    .venv/bin/python bench/push.py [--size-mb 50]

The folder is made here, deterministically (a seeded random): a few thousand small .py and .csv
files plus some larger binary files, as a model with its data and weights would be. Both sides
read it from the page cache (each is run once before timing) and the best of 3 runs counts.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from foretell.bundle import Limits, pack_dir, read_bundle

TARGET_RATIO = 1.5
RUNS = 3
MB = 1_000_000
SMALL_FILES = 3_000
# A share of the size goes to small files, the rest to a few large binaries.
SMALL_SHARE = 0.3
LARGE_FILE_MB = 6


def make_model_folder(root: Path, size_mb: int, seed: int = 20261122) -> tuple[int, int]:
    """Writes a model-like folder of about `size_mb` MB; returns (files, bytes)."""
    # Reproducible content, not secrets: the same seed gives the same folder on every machine.
    rng = random.Random(seed)  # noqa: S311
    small_budget = int(size_mb * MB * SMALL_SHARE)
    files = 0
    written = 0
    words = ["bars", "close", "signal", "window", "alpha", "beta", "horizon", "returns", "vol"]
    for i in range(SMALL_FILES):
        package = root / f"pkg{i % 12}" / f"sub{i % 7}"
        package.mkdir(parents=True, exist_ok=True)
        target = small_budget // SMALL_FILES
        if i % 3:
            lines: list[str] = []
            while sum(len(line) for line in lines) < target:
                a, b = rng.sample(words, 2)
                lines.append(f"def {a}_{b}_{len(lines)}(x):\n    return x * {rng.random():.6f}\n")
            content = "".join(lines)
            path = package / f"mod_{i}.py"
        else:
            rows = ["time,open,high,low,close,volume\n"]
            while sum(len(row) for row in rows) < target:
                p = rng.uniform(1, 2)
                volume = rng.randint(1, 10**6)
                rows.append(f"{len(rows)},{p:.5f},{p + 0.001:.5f},{p:.5f},{p:.5f},{volume}\n")
            content = "".join(rows)
            path = package / f"data_{i}.csv"
        path.write_text(content)
        files += 1
        written += len(content)
    weights = root / "weights"
    weights.mkdir()
    i = 0
    while written < size_mb * MB:
        size = min(LARGE_FILE_MB * MB, size_mb * MB - written)
        (weights / f"layer_{i}.bin").write_bytes(rng.randbytes(size))
        files += 1
        written += size
        i += 1
    (root / "foretell.toml").write_text(
        '[model]\nentrypoint = "pkg1.sub1.mod_1:predict"\nsymbols = ["EURUSD"]\n'
        'resolution = "1h"\nhorizon = 24\nlookback = 500\n'
    )
    return files + 1, written


def _best(run: Callable[[], object]) -> float:
    run()  # warm the page cache and the code paths
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _tar_sha256sum(folder: Path) -> str:
    # The shell's pipeline, built without a shell: tar's stdout feeds sha256sum's stdin.
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(folder), "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    digest = subprocess.run(
        ["sha256sum"], stdin=tar.stdout, capture_output=True, check=True
    ).stdout.decode()
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError("tar failed")
    return digest


def bench_bundling(size_mb: int = 50) -> None:
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        files, size = make_model_folder(folder, size_mb)
        # The benchmark measures speed, not the default limits (2,000 files, 64 MiB).
        limits = Limits(
            max_bundle_bytes=2 * size + MB,
            max_entries=2 * files,
            max_file_bytes=size,
            max_total_bytes=2 * size,
        )
        bundle = pack_dir(folder, limits)
        # What is measured must be a bundle the server accepts.
        assert read_bundle(bundle.data, limits).digest == bundle.digest
        packed = _best(lambda: pack_dir(folder, limits))
        piped = _best(lambda: _tar_sha256sum(folder))
    print(f"Bundling a {size / MB:.1f} MB folder ({files} files), best of {RUNS}:")
    for name, seconds in (
        ("(a) pack_dir (bundle + digest)", packed),
        ("(b) tar -cf - | sha256sum", piped),
    ):
        print(f"{name:<32} {size / MB / seconds:>7.0f} MB/s  {seconds * 1000:>7.1f} ms")
    ratio = packed / piped
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"pack_dir takes {ratio:.2f}x the time of tar | sha256sum "
        f"(target: bundling within {TARGET_RATIO}x of tar | sha256sum: {verdict}); "
        f"bundle {bundle.size / MB:.1f} MB, {bundle.digest[:19]}..."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=50, help="size of the model folder")
    args = parser.parse_args()
    bench_bundling(args.size_mb)


if __name__ == "__main__":
    main()
