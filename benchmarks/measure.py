"""Measuring the kernel's enclave image (issue 2): cold (every file hashed) and warm (unchanged files known
from the hash cache). The goal is that re-measuring an unchanged environment takes well under a second."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import median, write_result


def run(repeats: int = 5) -> dict[str, object]:
    from teelab.enclave_runtime.hashcache import HashCache
    from teelab.enclave_runtime.images import kernel_image_spec
    from teelab.enclave_runtime.manifest import expand

    spec = kernel_image_spec()
    with tempfile.TemporaryDirectory() as scratch:
        cache_file = Path(scratch) / "hashes.sqlite"
        start = time.perf_counter()
        with HashCache(cache_file) as cache:
            manifest = expand(spec, cache)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            with HashCache(cache_file) as cache:
                again = expand(spec, cache)
            warm.append(time.perf_counter() - start)
            assert again.mrenclave == manifest.mrenclave
    result = {
        "trusted_files": len(manifest.trusted_files),
        "trusted_megabytes": round(manifest.total_size / 1e6, 1),
        "cold_seconds": round(cold, 2),
        "warm_seconds_median": round(median(warm), 3),
        "goal": {"warm_seconds": 1.0},
        "meets_goal": median(warm) < 1.0,
    }
    write_result("measure", result)
    return result


if __name__ == "__main__":
    print(run())
