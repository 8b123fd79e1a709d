"""Sealed vs plain Dask reads on the same parts, row groups, compression, workers, threads and TLS (issue 16).

- Data: sealed_read.py's synthetic event table (ids, timestamps, high- and low-cardinality strings, a
  categorical, floats with nulls, ints, bools), by default 24M rows: >= 2 GB as pandas DataFrames. It is
  sealed into a local store, and rewritten unencrypted in exactly the sealed layout (one plain Parquet file
  per sealed part, the same row groups and writer settings; asserted).
- Cluster (default): ``teelab.dask.TeeCluster`` on the sim backend — an attested scheduler and 2 attested
  worker processes of 1 thread, mutual TLS from the cluster's CA, spilling off — used by both arms, which
  run interleaved in random order on the same workers. ``--cluster local``: a ``distributed.LocalCluster``
  with the same workers, threads and TLS (``Security.temporary()``), without the attested launch.
- Sealed arm: ``teelab.sealed_store.dask.read_dataset`` in this process, which plays the attested kernel (a
  simulated-SGX enclave of the kernel image with a session grant from a real key broker on loopback, under a
  gateway's controller). TeeCluster asks it for a grant delegated to each worker it admits; each worker then
  releases the key itself, with its own evidence, once. "Warm" runs reuse the worker's opened version; the
  "cold" row makes every worker release and authenticate again.
- Plain arm: ``dd.read_parquet(folder, split_row_groups=False)``: one partition per plain part.
- Queries: full scan (every column decoded: the partitions' memory usage summed), a one-column projection
  (``amount.sum()``), and a shuffle groupby (``groupby(["city", "country"]).amount.sum(split_out=4)`` with the
  task shuffle; P2P would put shuffle data on a host-visible disk, which TeeCluster turns off). Each timing
  includes building the graph (the sealed arm's kernel-side key release and manifest check, the plain arm's
  footer reads). Goal: median(sealed) <= 1.15 x median(plain).

    .venv/bin/python benchmarks/dask_read.py [--rows 24000000] [--runs 5]
    .venv/bin/python benchmarks/dask_read.py --quick      # a small run that checks the benchmark works
    .venv/bin/python benchmarks/dask_read.py --cluster local   # LocalCluster instead of TeeCluster

Writes benchmarks/results/dask_read.json (``--quick``: dask_read_quick.json, never shown in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from common import median, write_result
from sealed_read import _load_average, _prepare, _row_groups, _sealed_part_groups, _write_plain_parts

GOAL = 1.15
FULL_ROWS = 24_000_000
FULL_RUNS = 5
QUICK_ROWS, QUICK_RUNS = 300_000, 3
QUICK_ROW_GROUP_ROWS, QUICK_PART_ROWS = 25_000, 75_000  # 4 parts of 3 row groups
WORKERS, THREADS = 2, 1
GATEWAY = hashlib.sha256(b"bench gateway identity key").digest()
CLUSTER = hashlib.sha256(b"bench cluster controller key").digest()
MRENCLAVE = hashlib.sha256(b"bench kernel").digest()


def _nbytes(part: pd.DataFrame) -> int:
    return int(part.memory_usage(deep=False).sum())


def _deep_bytes(part: pd.DataFrame) -> int:
    return int(part.memory_usage(deep=True).sum())


QUERIES: dict[str, Callable[[Any], Any]] = {
    # Every column decoded into pandas, nothing kept: the cost of reading the whole dataset.
    "full_scan": lambda df: df.map_partitions(_nbytes, meta=("bytes", "int64")).sum(),
    "projection": lambda df: df["amount"].sum(),
    "shuffle_groupby": lambda df: df.groupby(["city", "country"]).amount.sum(
        split_out=4, shuffle_method="tasks"
    ),
}


def _enclave(platform: Any, controller: bytes, mrenclave: bytes) -> tuple[Any, Any]:
    """A simulated enclave of ``mrenclave``, launched under ``controller`` (CONFIGID), and its key E."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from teelab.enclave_runtime.sim.identity import SimIdentity
    from teelab.enclave_runtime.sim.runtime import SimRuntime

    identity = SimIdentity(
        platform=platform.path,
        mrenclave=mrenclave,
        mrsigner=hashlib.sha256(b"bench signer").digest(),
        isv_prod_id=0,
        isv_svn=0,
        attributes=0x05,
        config_id=controller + bytes(32),
    )
    return SimRuntime(identity, platform), X25519PrivateKey.generate()


def _kernel_session(
    root: Path, platform: Any, mrenclave: bytes, store_url: str, manifest_sha256: str, dek: bytes
) -> Any:
    """A key broker holding the dataset's key (released only to ``mrenclave`` on ``platform``), and this process
    made the attested kernel: a simulated enclave of that image with a session grant, under a gateway's
    controller — the state the kernel boot installs."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from teelab.protocols.session import KeyBrokerSection
    from teelab.sealed_store.kbs.client import KbsClient
    from teelab.sealed_store.kbs.config import KbsConfig
    from teelab.sealed_store.kbs.identity import issue_local_token
    from teelab.sealed_store.kbs.server import KbsServer
    from teelab.sealed_store.notebook import ReaderSession, install_key_release

    config = KbsConfig(
        state_dir=root / "kbs",
        sim_platform=platform.path,
        simulated_roots={platform.root_fingerprint: "benchmark platform"},
    )
    broker = KbsServer(config, address="127.0.0.1:0")
    broker.start()
    runtime, secret = _enclave(platform, GATEWAY, mrenclave)
    enclave_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with KbsClient.with_token_file(broker.target, root / "kbs" / "admin-token") as admin:
        admin.register_dataset(
            "bench",
            1,
            manifest_sha256=manifest_sha256,
            dek=dek,
            release_policy_toml=f'allow_simulation = true\n[sgx]\nmrenclave = ["{mrenclave.hex()}"]\n',
            owner="bench",
        )
        admin.grant("bench", "user:analyst")
    with KbsClient.with_token_file(broker.target, issue_local_token(root / "kbs", "analyst")) as gateway:
        grant = gateway.issue_session_grant("analyst", enclave_key=enclave_key, controller=GATEWAY)
        kbs_key = gateway.kbs_public_key()
    section = KeyBrokerSection(
        address=broker.target, store=store_url, user="analyst", kbs_key=kbs_key, grant=grant.token
    )
    install_key_release(ReaderSession(section, secret, runtime.evidence))
    return broker


def _install_worker_session(secret: bytes, identity: Any, section: Any) -> str:
    """Runs in a worker: what TeeCluster's worker boot does with the sealed bundle's key broker section."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from teelab.enclave_runtime.sim.platform import SimPlatform
    from teelab.enclave_runtime.sim.runtime import SimRuntime
    from teelab.sealed_store import dask as sealed_dask
    from teelab.sealed_store.notebook import ReaderSession, install_key_release

    runtime = SimRuntime(identity, SimPlatform.load(identity.platform))
    install_key_release(ReaderSession(section, X25519PrivateKey.from_private_bytes(secret), runtime.evidence))
    sealed_dask.forget_keys()
    return "installed"


def _forget_keys() -> None:
    from teelab.sealed_store import dask as sealed_dask

    sealed_dask.forget_keys()


def _admit_workers(client: Any, platform: Any, mrenclave: bytes) -> None:
    """Each worker: its own enclave under the cluster's controller, and a grant this kernel delegates to it."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    from teelab.sealed_store.dask_keys import delegate_grant

    for address in sorted(client.scheduler_info()["workers"]):
        runtime, secret = _enclave(platform, CLUSTER, mrenclave)
        section = delegate_grant(secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), CLUSTER)
        assert section is not None, "no delegated grant"
        raw = secret.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        client.run(_install_worker_session, raw, runtime.identity, section, workers=[address])


def _local_cluster() -> tuple[Any, Any]:
    import dask
    import distributed
    from distributed.security import Security

    dask.config.set(
        {
            "distributed.worker.memory.spill": False,
            "distributed.worker.memory.target": False,
            "distributed.worker.memory.pause": False,
            "distributed.worker.daemon": False,
        }
    )
    security = Security.temporary()
    cluster = distributed.LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=THREADS,
        processes=True,
        protocol="tls://",
        security=security,
        dashboard_address=None,
        memory_limit=0,
    )
    return cluster, distributed.Client(cluster, security=security)


def _tee_cluster() -> tuple[Any, Any]:
    from teelab.dask import TeeCluster

    cluster = TeeCluster(n_workers=WORKERS, threads_per_worker=THREADS, backend="sim")
    return cluster, cluster.get_client()


CLUSTERS = {
    "tee": "teelab.dask.TeeCluster on the sim backend: 2 attested worker processes x 1 thread and an attested "
    "scheduler, mutual TLS from the per-cluster CA, spill off, each worker's key broker grant delegated by "
    "this process (the kernel)",
    "local": "distributed.LocalCluster: 2 worker processes x 1 thread, TLS (Security.temporary), spill off; "
    "each worker given a simulated enclave and a delegated grant by the benchmark (not TeeCluster)",
}


def _interleaved(
    variants: dict[str, Callable[[], Any]], runs: int, before: dict[str, Callable[[], None]]
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = random.Random(16)
    for round_number in range(runs):
        names = list(variants)
        order.shuffle(names)
        for name in names:
            if name in before:
                before[name]()
            gc.collect()
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
        print(f"round {round_number + 1}/{runs}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in times))
    return times


def run(
    rows: int = FULL_ROWS, runs: int = FULL_RUNS, *, quick: bool = False, cluster_kind: str = "tee"
) -> dict[str, object]:
    from common import isolated_teelab

    with tempfile.TemporaryDirectory() as scratch, isolated_teelab(Path(scratch)):
        return _run(rows, runs, quick=quick, cluster_kind=cluster_kind)


def _run(rows: int, runs: int, *, quick: bool, cluster_kind: str) -> dict[str, object]:
    import dask.dataframe as dd

    from teelab.enclave_runtime.sim.platform import SimPlatform
    from teelab.kernel.kernelspec import install
    from teelab.paths import cache_dir
    from teelab.sealed_store.dask import read_dataset
    from teelab.sealed_store.seal import seal_dataset
    from teelab.sealed_store.storage import DatasetStore
    from teelab.timeutil import utcnow

    cache = cache_dir() / f"bench-dask-read-{rows}"
    plain, row_group_rows = _prepare(cache, rows, QUICK_ROW_GROUP_ROWS if quick else None)
    with tempfile.TemporaryDirectory(dir=plain.parent) as tmp:
        store_root = Path(tmp) / "store"
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
        store = DatasetStore(store_root.as_uri())
        plain_folder = Path(tmp) / "plain"
        plain_parts = _write_plain_parts(plain, sealed, plain_folder)
        assert [_row_groups(p) for p in plain_parts] == _sealed_part_groups(sealed), "layouts differ"
        if cluster_kind == "tee":
            # The kernel image and the simulated platform the cluster's nodes run on (this run's own folders).
            mrenclave = install(backend="sim", user=True).image.mrenclave
            platform = SimPlatform.open()
        else:
            mrenclave = MRENCLAVE
            platform = SimPlatform.create(Path(tmp) / "sim-platform", now=utcnow())
        broker = _kernel_session(
            Path(tmp), platform, mrenclave, store.url, sealed.dataset.manifest_sha256, sealed.dek
        )
        cluster, client = _tee_cluster() if cluster_kind == "tee" else _local_cluster()
        try:
            if cluster_kind == "local":
                _admit_workers(client, platform, mrenclave)

            def sealed_frame() -> Any:
                return read_dataset("bench")

            def plain_frame() -> Any:
                return dd.read_parquet(str(plain_folder), split_row_groups=False)

            parts = len(sealed.dataset.manifest.parts)
            assert sealed_frame().npartitions == plain_frame().npartitions == parts, "partitions differ"
            frame_bytes = int(plain_frame().map_partitions(_deep_bytes, meta=("b", "int64")).sum().compute())
            assert rows < FULL_ROWS or frame_bytes >= 2e9, (
                f"only {frame_bytes / 1e9:.2f} GB as DataFrames; raise --rows"
            )
            checks = {}
            for query_name, query in QUERIES.items():
                got_sealed = query(sealed_frame()).compute()
                got_plain = query(plain_frame()).compute()
                if isinstance(got_sealed, pd.Series):
                    got_sealed, got_plain = got_sealed.sort_index(), got_plain.sort_index()
                    assert np.allclose(got_sealed.to_numpy(), got_plain.to_numpy()), f"{query_name} differs"
                else:
                    assert np.isclose(got_sealed, got_plain), f"{query_name} differs"
                checks[query_name] = "sealed == plain"

            variants: dict[str, Callable[[], Any]] = {}
            for query_name, query in QUERIES.items():
                variants[f"plain/{query_name}"] = lambda q=query: q(plain_frame()).compute()
                variants[f"sealed/{query_name}"] = lambda q=query: q(sealed_frame()).compute()
            variants["sealed_cold/full_scan"] = lambda: QUERIES["full_scan"](sealed_frame()).compute()
            before = {"sealed_cold/full_scan": lambda: client.run(_forget_keys)}
            times = _interleaved(variants, runs, before)
            releases = _count_releases(broker, Path(tmp) / "kbs")
        finally:
            client.close()
            cluster.close()
            broker.stop(grace=1)
        sealed_bytes = sealed.dataset.manifest.total_size
        plain_bytes = sum(p.stat().st_size for p in plain_parts)
        shutil.rmtree(store_root)
        shutil.rmtree(plain_folder)

    medians = {name: round(median(values), 4) for name, values in times.items()}
    ratios = {q: round(medians[f"sealed/{q}"] / medians[f"plain/{q}"], 3) for q in QUERIES}
    ratios["full_scan_cold"] = round(medians["sealed_cold/full_scan"] / medians["plain/full_scan"], 3)
    result: dict[str, object] = {
        "name": "dask_read",
        "what": "teelab.sealed_store.dask.read_dataset vs dd.read_parquet on the same parts, row groups, "
        "compression, workers, threads and TLS",
        "cluster": CLUSTERS[cluster_kind] + "; simulated SGX evidence, key broker on loopback",
        "quick": quick,
        "rows": rows,
        "dataframe_bytes": frame_bytes,
        "plain_parquet_bytes": plain_bytes,
        "sealed_bytes": sealed_bytes,
        "parts": parts,
        "row_group_rows": row_group_rows,
        "compression": "snappy",
        "runs": runs,
        "checks": checks,
        "key_releases": releases,
        "times_seconds": {name: [round(t, 4) for t in values] for name, values in times.items()},
        "medians": medians,
        "min_seconds": {name: round(min(values), 4) for name, values in times.items()},
        "ratios": ratios,
        "goal": GOAL,
        "meets_goal": all(ratios[q] <= GOAL for q in QUERIES),
        "versions": {"pyarrow": pa.__version__, "pandas": pd.__version__, "dask": _dask_version()},
        "load_average_during_run": _load_average(),
    }
    write_result("dask_read_quick" if quick else "dask_read", result)
    return result


def _dask_version() -> str:
    import dask

    return str(dask.__version__)


def _count_releases(broker: Any, kbs_state: Path) -> dict[str, int]:
    """Releases in the broker's audit log by the enclave key they went to (kernel vs each worker), and the
    delegated grants."""
    from teelab.sealed_store.kbs.client import KbsClient

    counts: dict[str, int] = {}
    with KbsClient.with_token_file(broker.target, kbs_state / "admin-token") as admin:
        for record in admin.iter_audit():
            entry = record.entry()
            if entry.get("event") == "release" and entry.get("outcome") == "released":
                key = f"releases to {str(entry.get('ekh'))[:12]}"
                counts[key] = counts.get(key, 0) + 1
            if entry.get("event") == "delegate" and entry.get("outcome") == "issued":
                counts["delegated grants"] = counts.get("delegated grants", 0) + 1
    return counts


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
        help="a small run that checks the benchmark works (dask_read_quick.json)",
    )
    parser.add_argument(
        "--cluster",
        choices=sorted(CLUSTERS),
        default="tee",
        help="tee (default): TeeCluster; local: LocalCluster",
    )
    options = parser.parse_args()
    rows = options.rows or (QUICK_ROWS if options.quick else FULL_ROWS)
    runs = options.runs or (QUICK_RUNS if options.quick else FULL_RUNS)
    print(json.dumps(run(rows, runs, quick=options.quick, cluster_kind=options.cluster), indent=1))
