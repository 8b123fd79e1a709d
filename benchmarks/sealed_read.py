"""Reading a sealed dataset vs reading the same data unencrypted, and sealing throughput (issue 5).

- Data: a synthetic event table with mixed types (ids, timestamps, high- and low-cardinality strings, a
  categorical, floats with nulls, ints, bools), large enough to occupy >= 1 GB as a pandas DataFrame. It is
  generated once, chunk by chunk, into a plain Parquet file in teelab's cache folder and reused.
- Sealing: ``seal_dataset`` streams that Parquet file into a sealed version (timed: MB/s of Arrow data in,
  of ciphertext out). It is sealed straight into a local store's ``<name>/v1/`` folder, which is exactly the
  layout an upload would produce, so no copy is timed or needed.
- Reading: ``read_dataset`` — the analyst's call: a key release from a real key broker on loopback (challenge,
  fresh simulated-SGX evidence bound to the session key and grant, verification, HPKE), then the decrypting
  read — and ``read_sealed`` alone (the decryption, key in hand), each of the whole dataset into pandas, vs
  ``pd.read_parquet`` of the same data *unencrypted in the same layout*: a folder of plain Parquet files with
  the same parts (the same rows in each), the same row groups, compression, dictionary encoding and
  statistics, written by the same pyarrow writer settings as ``seal`` minus the encryption (asserted before
  timing). Comparing against one big plain file instead would flatter or penalise the sealed read for its
  layout rather than measure the cost of sealing. Rounds are interleaved in random order after a warm-up,
  files are in the page cache, and both use pyarrow's default thread pool. Goal: median(read_dataset) <=
  1.05 x median(plain) in wall-clock time. CPU time (all threads) is recorded too: on a shared machine other
  processes move wall-clock times far more than they move CPU time.

    .venv/bin/python benchmarks/sealed_read.py [--rows 16000000] [--runs 15]
    .venv/bin/python benchmarks/sealed_read.py --quick      # a small run that checks the benchmark works
    .venv/bin/python benchmarks/sealed_read.py --s3         # also both reads from an S3 API server (moto)

Writes benchmarks/results/sealed_read.json (``--quick``: sealed_read_quick.json, which BENCHMARKS.md never
shows: its data is too small to mean anything).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import median, write_result

from teelab.sealed_store.seal import SealResult

GENERATOR_VERSION = 2  # bump when the generated data changes, to invalidate the cache
GOAL = 1.05
FULL_ROWS = 16_000_000
# Two reads doing the same work differ by up to 4% in medians of 7 on this shared VM: 15 rounds narrow that.
FULL_RUNS = 15
QUICK_ROWS, QUICK_RUNS = 300_000, 5
QUICK_ROW_GROUP_ROWS, QUICK_PART_ROWS = 25_000, 75_000  # 4 parts of 3 row groups


def _chunk(rng: np.random.Generator, start: int, rows: int) -> pa.Table:
    cities = pa.array([f"city-{i:03d}" for i in range(400)])
    countries = pa.array([f"C{i:02d}" for i in range(60)])
    status = pa.DictionaryArray.from_arrays(
        pa.array(rng.integers(0, 4, rows).astype(np.int8)), pa.array(["new", "paid", "shipped", "returned"])
    )
    score = rng.normal(0, 1, rows)
    return pa.table(
        {
            "event_id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
            "at": pa.array(
                np.datetime64("2024-01-01T00:00:00", "us") + rng.integers(0, 365 * 86_400 * 10**6, rows),
                pa.timestamp("us"),
            ),
            "user": pc.binary_join_element_wise(
                "user-", pc.cast(pa.array(rng.integers(0, 2**40, rows)), pa.string()), ""
            ),
            "city": pc.take(cities, pa.array(rng.integers(0, len(cities), rows))),
            "country": pc.take(countries, pa.array(rng.integers(0, len(countries), rows))),
            "status": status,
            "amount": pa.array(np.round(rng.lognormal(3, 1, rows), 2)),
            "score": pa.array(score, mask=rng.random(rows) < 0.05),
            "quantity": pa.array(rng.integers(1, 50, rows).astype(np.int32)),
            "returned": pa.array(rng.random(rows) < 0.03),
        }
    )


def _prepare(cache: Path, rows: int, row_group_rows: int | None = None) -> tuple[Path, int]:
    """The plain Parquet file (generated once) and its row-group size, chosen exactly as ``seal`` would
    unless given."""
    from teelab.sealed_store.seal import plan_layout

    plain = cache / "plain.parquet"
    stamp = cache / "plain.json"
    expected = {"generator": GENERATOR_VERSION, "rows": rows}
    rng = np.random.default_rng(2026)
    sample = _chunk(rng, 0, 100_000)
    row_group_rows = (
        row_group_rows
        or plan_layout(num_rows=rows, bytes_per_row=sample.nbytes / sample.num_rows).row_group_rows
    )
    if stamp.exists() and json.loads(stamp.read_text()) == {**expected, "row_group_rows": row_group_rows}:
        return plain, row_group_rows
    cache.mkdir(parents=True, exist_ok=True)
    print(f"generating {rows:,} rows into {plain} (once)...", flush=True)
    rng = np.random.default_rng(2026)
    chunk_rows = 4 * row_group_rows  # whole row groups per write: the same row-group boundaries as the seal
    with pq.ParquetWriter(plain, sample.schema, compression="snappy") as writer:
        for start in range(0, rows, chunk_rows):
            chunk = _chunk(rng, start, min(chunk_rows, rows - start))
            writer.write_table(chunk, row_group_size=row_group_rows)
    stamp.write_text(json.dumps({**expected, "row_group_rows": row_group_rows}))
    return plain, row_group_rows


def _row_groups(path: Path, decryption: object = None) -> list[int]:
    metadata = pq.ParquetFile(path, decryption_properties=decryption).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def _sealed_part_groups(sealed: SealResult) -> list[list[int]]:
    """The row-group sizes of each sealed part, decrypting each footer with the part's key (as the reader
    does): the layout the plain baseline must copy."""
    import pyarrow.parquet.encryption as pe

    from teelab.sealed_store.format import aad_prefix, part_key

    parts = sealed.dataset.manifest.parts
    layout = []
    for k in range(1, len(parts) + 1):
        prefix = aad_prefix("bench", 1, k, len(parts))
        keys = pe.create_decryption_properties(part_key(sealed.dek, prefix), aad_prefix=prefix.encode())
        layout.append(_row_groups(sealed.dataset.part_path(k), keys))
    return layout


def _write_plain_parts(plain: Path, sealed: SealResult, folder: Path) -> list[Path]:
    """The plain file rewritten in the sealed version's layout: one plain Parquet file per sealed part with the
    same row groups, and the writer settings of ``seal`` (seal.py's ``_PartWriter``) without the encryption."""
    source = pq.ParquetFile(plain)
    folder.mkdir(parents=True)
    paths, group = [], 0
    for k, groups in enumerate(_sealed_part_groups(sealed), 1):
        path = folder / f"part-{k:05d}.parquet"
        with pq.ParquetWriter(
            path, source.schema_arrow, compression="snappy", use_dictionary=True, write_statistics=True
        ) as writer:
            for rows in groups:
                table = source.read_row_group(group)
                assert table.num_rows == rows, "the plain file's row groups differ from the sealed parts'"
                writer.write_table(table, row_group_size=rows)
                group += 1
        paths.append(path)
    assert group == source.metadata.num_row_groups, "the sealed parts hold fewer row groups than the source"
    return paths


def _load_average() -> list[float] | None:
    """Other processes on a shared machine make runs noisy; the result records how busy it was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _attested_session(root: Path, store: object, sealed: SealResult) -> object:
    """A key broker holding the dataset's key, and this process made an attested (simulated) session: the
    same state the kernel boot installs, so ``read_dataset`` runs its real path."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    import teelab.session
    from teelab.enclave_runtime.sim.identity import SimIdentity
    from teelab.enclave_runtime.sim.platform import SimPlatform
    from teelab.enclave_runtime.sim.runtime import SimRuntime
    from teelab.protocols.session import KeyBrokerSection
    from teelab.sealed_store.kbs.client import KbsClient
    from teelab.sealed_store.kbs.config import KbsConfig
    from teelab.sealed_store.kbs.identity import issue_local_token
    from teelab.sealed_store.kbs.server import KbsServer
    from teelab.sealed_store.notebook import ReaderSession, install_key_release
    from teelab.timeutil import utcnow

    platform = SimPlatform.create(root / "sim-platform", now=utcnow())
    identity = SimIdentity(
        platform=platform.path,
        mrenclave=hashlib.sha256(b"bench kernel").digest(),
        mrsigner=hashlib.sha256(b"bench signer").digest(),
        isv_prod_id=0,
        isv_svn=0,
        attributes=0x05,
    )
    runtime = SimRuntime(identity, platform)
    config = KbsConfig(
        state_dir=root / "kbs",
        sim_platform=platform.path,
        simulated_roots={platform.root_fingerprint: "benchmark platform"},
    )
    broker = KbsServer(config, address="127.0.0.1:0")
    broker.start()
    secret = X25519PrivateKey.generate()
    enclave_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with KbsClient.with_token_file(broker.target, root / "kbs" / "admin-token") as admin:
        admin.register_dataset(
            "bench",
            1,
            manifest_sha256=sealed.dataset.manifest_sha256,
            dek=sealed.dek,
            release_policy_toml=f'allow_simulation = true\n[sgx]\nmrenclave = ["{identity.mrenclave.hex()}"]\n',
            owner="bench",
        )
        admin.grant("bench", "user:analyst")
    # The gateway asks for the session grant with the analyst's own credential (a grant is only for yourself).
    analyst_token = issue_local_token(root / "kbs", "analyst")
    with KbsClient.with_token_file(broker.target, analyst_token) as gateway:
        grant = gateway.issue_session_grant("analyst", enclave_key=enclave_key)
        gateway_key = gateway.kbs_public_key()
    section = KeyBrokerSection(
        address=broker.target,
        kbs_key=gateway_key,
        store=store.url,  # type: ignore[attr-defined]
        grant=grant.token,
        user="analyst",
    )
    teelab.session.install(
        attestation={"verdict": "warning", "simulated": True}, key_broker=section, attest=runtime.evidence
    )
    install_key_release(ReaderSession(section, secret, runtime.evidence))
    return broker


def _interleaved(
    variants: dict[str, Callable[[], pd.DataFrame]], runs: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds of each variant, ``runs`` rounds in a random order each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    order = random.Random(5)
    for round_number in range(runs):
        names = list(variants)
        order.shuffle(names)
        for name in names:
            gc.collect()
            started, cpu_started = time.perf_counter(), time.process_time()
            frame = variants[name]()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)  # all threads; less sensitive to load
            del frame
        print(f"round {round_number + 1}/{runs}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in times))
    return times, cpu


@contextmanager
def _s3_server() -> Iterator[str]:
    """moto's S3 API server in its own process on loopback (in this one, it would compete for the GIL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _s3_variant(sealed: SealResult, plain_parts: list[Path], runs: int) -> dict[str, object]:
    """The same comparison with both copies on an S3 API server on loopback (``--s3``): what reading from
    object storage adds, to the sealed read and to the plain one alike."""
    from teelab.sealed_store.reader import read_sealed
    from teelab.sealed_store.storage import DatasetStore

    with _s3_server() as endpoint:
        options = {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}
        store = DatasetStore(f"s3://bench/sealed?endpoint_url={endpoint}&key=bench&secret=bench")
        store.fs.mkdir("bench")
        store.upload(sealed.dataset, progress=False)
        store.fs.put([str(p) for p in plain_parts], "bench/plain/")

        def sealed_s3() -> pd.DataFrame:
            return read_sealed(
                store, "bench", version=1, manifest_sha256=sealed.dataset.manifest_sha256, dek=sealed.dek
            )

        def plain_s3() -> pd.DataFrame:
            return pd.read_parquet("s3://bench/plain/", storage_options=options)

        assert sealed_s3().equals(plain_s3()), "sealed and plain reads from S3 differ"
        times, cpu = _interleaved({"plain_s3": plain_s3, "sealed_s3": sealed_s3}, runs)
    medians = {name: round(median(values), 4) for name, values in times.items()}
    return {
        "server": "moto (S3 API) on loopback, its own process",
        "times_seconds": {name: [round(t, 4) for t in values] for name, values in times.items()},
        "medians": medians,
        "ratio": round(medians["sealed_s3"] / medians["plain_s3"], 3),
        "cpu_ratio": round(median(cpu["sealed_s3"]) / median(cpu["plain_s3"]), 3),
    }


def run(
    rows: int = FULL_ROWS, runs: int = FULL_RUNS, *, quick: bool = False, s3: bool = False
) -> dict[str, object]:
    from teelab.paths import cache_dir
    from teelab.sealed_store.reader import read_sealed
    from teelab.sealed_store.seal import seal_dataset
    from teelab.sealed_store.storage import DatasetStore

    # A cache of its own for other sizes, so a quick run never regenerates the full run's 16M-row file.
    cache = cache_dir() / ("bench-sealed-read" if rows == FULL_ROWS else f"bench-sealed-read-{rows}")
    # Quick: small row groups and parts, so that even a small run reads several parts of several row groups.
    plain, row_group_rows = _prepare(cache, rows, QUICK_ROW_GROUP_ROWS if quick else None)
    plain_table = pq.read_table(plain)
    arrow_bytes = plain_table.nbytes
    del plain_table

    with tempfile.TemporaryDirectory(dir=plain.parent) as tmp:
        store_root = Path(tmp) / "store"
        gc.collect()
        started = time.perf_counter()
        sealed = seal_dataset(
            plain,
            name="bench",
            version=1,
            out=store_root / "bench" / "v1",
            row_group_rows=row_group_rows,
            part_rows=QUICK_PART_ROWS if quick else None,
            compression="snappy",
            progress=False,
        )
        seal_seconds = time.perf_counter() - started
        ciphertext_bytes = sealed.dataset.manifest.total_size
        store = DatasetStore(store_root.as_uri())
        plain_folder = Path(tmp) / "plain"
        plain_parts = _write_plain_parts(plain, sealed, plain_folder)

        def sealed_read() -> pd.DataFrame:
            return read_sealed(
                store,
                "bench",
                version=1,
                manifest_sha256=sealed.dataset.manifest_sha256,
                dek=sealed.dek,
            )

        def plain_read() -> pd.DataFrame:
            return pd.read_parquet(plain_folder)  # the folder of plain parts, as an analyst would read it

        broker = _attested_session(Path(tmp), store, sealed)
        from teelab.sealed_store import read_dataset

        def dataset_read() -> pd.DataFrame:
            return read_dataset("bench")

        check_sealed, check_plain, check_dataset = sealed_read(), plain_read(), dataset_read()
        assert check_sealed.equals(check_plain), "sealed and plain reads differ"
        assert check_dataset.equals(check_plain), "read_dataset and plain reads differ"
        frame_bytes = int(check_plain.memory_usage(deep=True).sum())
        assert quick or frame_bytes >= 1e9, f"only {frame_bytes / 1e9:.2f} GB in memory; raise --rows"
        del check_sealed, check_plain, check_dataset

        variants = {"plain": plain_read, "sealed": sealed_read, "read_dataset": dataset_read}
        times, cpu = _interleaved(variants, runs)
        s3_result = _s3_variant(sealed, plain_parts, runs) if s3 else None
        parts = len(sealed.dataset.manifest.parts)
        assert [_row_groups(p) for p in plain_parts] == _sealed_part_groups(sealed), "layouts differ"
        plain_parquet_bytes = sum(p.stat().st_size for p in plain_parts)
        broker.stop(grace=1)  # type: ignore[attr-defined]
        shutil.rmtree(store_root)
        shutil.rmtree(plain_folder)

    medians = {name: round(median(values), 4) for name, values in times.items()}
    ratio = medians["read_dataset"] / medians["plain"]
    paired = statistics.median(s / p for s, p in zip(times["sealed"], times["plain"], strict=True))
    result: dict[str, object] = {
        "name": "sealed_read",
        "what": "read_dataset (key release + decrypting read, whole dataset -> pandas) and read_sealed (the "
        "decryption alone) vs pd.read_parquet of the same data unencrypted in the same layout",
        "baseline": "pd.read_parquet(folder): plain Parquet, the same parts, row groups, compression, "
        "dictionary encoding, statistics and columns as the sealed version",
        "quick": quick,
        "rows": rows,
        "dataframe_bytes": frame_bytes,
        "arrow_bytes": arrow_bytes,
        "plain_parquet_bytes": plain_parquet_bytes,
        "sealed_bytes": ciphertext_bytes,
        "parts": parts,
        "row_group_rows": row_group_rows,
        "compression": "snappy",
        "runs": runs,
        "times_seconds": {name: [round(t, 4) for t in values] for name, values in times.items()},
        "medians": medians,
        "ratio": round(ratio, 3),
        "sealed_ratio": round(medians["sealed"] / medians["plain"], 3),
        "paired_ratio_median": round(paired, 3),
        "cpu_seconds": {name: [round(t, 4) for t in values] for name, values in cpu.items()},
        "cpu_medians": {name: round(median(values), 4) for name, values in cpu.items()},
        "cpu_ratio": round(median(cpu["sealed"]) / median(cpu["plain"]), 3),
        # Minimums are the least disturbed runs: the fairest comparison when the machine is shared.
        "min_seconds": {name: round(min(values), 4) for name, values in times.items()},
        "min_ratio": round(min(times["sealed"]) / min(times["plain"]), 3),
        "cpu_min_ratio": round(min(cpu["sealed"]) / min(cpu["plain"]), 3),
        "goal": GOAL,
        "meets_goal": ratio <= GOAL,
        "seal": {
            "seconds": round(seal_seconds, 2),
            "input_arrow_MB_per_s": round(arrow_bytes / seal_seconds / 1e6, 1),
            "output_MB_per_s": round(ciphertext_bytes / seal_seconds / 1e6, 1),
            "source": "plain Parquet file, streamed",
        },
        "versions": {"pyarrow": pa.__version__, "pandas": pd.__version__, "numpy": np.__version__},
        "load_average_during_run": _load_average(),
        **({"s3": s3_result} if s3_result is not None else {}),
    }
    write_result("sealed_read_quick" if quick else "sealed_read", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=None, help=f"default {FULL_ROWS:,} ({QUICK_ROWS:,} with --quick)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help=f"default {FULL_RUNS} ({QUICK_RUNS} with --quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run that checks the benchmark works; results go to sealed_read_quick.json",
    )
    parser.add_argument(
        "--s3", action="store_true", help="also compare both reads from an S3 API server (moto) on loopback"
    )
    options = parser.parse_args()
    rows = options.rows or (QUICK_ROWS if options.quick else FULL_ROWS)
    runs = options.runs or (QUICK_RUNS if options.quick else FULL_RUNS)
    print(json.dumps(run(rows, runs, quick=options.quick, s3=options.s3), indent=1))
