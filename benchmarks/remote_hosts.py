"""Remote TEE hosts (issue 15) against local kernels, side by side in one run.

- cold start → first ``execute_reply``: the local ``teelab-sim`` kernel and the same image placed by the
  ``teelab-remote`` provisioner on a host agent on another loopback address over TLS (median, alternating);
- execute round trip (median, p99), both kernels running, one cell to each in turn;
- ``concurrent`` kernels spread over three agents, started at once: failures counted.
Goals: start ≤ 1.2× local, round trip ≤ 1.1× local, 0 failures.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import isolated_teelab, median, percentile, write_result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kernel_session import _round_trips, _start_to_first_reply

REMOTE = "teelab-remote"
TOKEN = "benchmark-gateway-token-0123456789"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def _tls(folder: Path) -> tuple[Path, Path, Path]:
    """An operator CA and one certificate naming every agent's address."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "benchmark CA")])

    def cert(subject: x509.Name, public: ec.EllipticCurvePublicKey, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.IPAddress(ipaddress.ip_address(h)) for h in HOSTS]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    paths = folder / "ca.pem", folder / "host.pem", folder / "host.key"
    paths[0].write_bytes(cert(ca_name, ca_key.public_key(), True).public_bytes(serialization.Encoding.PEM))
    leaf = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]), key.public_key(), False)
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


@contextmanager
def _agents(root: Path, count: int, capacity: int) -> Iterator[list[str]]:
    _, cert, key = _tls(root)
    tokens = root / "gateways"
    tokens.write_text(f"bench {TOKEN}\n")
    tokens.chmod(0o600)
    processes, targets = [], []
    try:
        for host in HOSTS[:count]:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "teelab.cli", "host", "serve", "--listen", f"{host}:0"),
                    *("--tokens", str(tokens), "--tls-cert", str(cert), "--tls-key", str(key)),
                    *("--capacity", str(capacity), "--per-gateway", str(capacity)),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(process)
            assert process.stdout is not None
            line = process.stdout.readline()
            if "listening on" not in line:
                raise RuntimeError(f"the host agent on {host} did not start: {line!r}")
            targets.append(line.split()[-1])
        yield targets
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _remote_kernelspec(installed: object, root: Path) -> None:
    from importlib.metadata import EntryPoint

    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    KernelProvisionerFactory.instance().provisioners.setdefault(
        REMOTE,
        EntryPoint(
            REMOTE,
            "teelab.kernel.remote_provisioner:RemoteTeeProvisioner",
            KernelProvisionerFactory.GROUP_NAME,
        ),
    )
    spec_dir: Path = installed.kernelspec_dir  # type: ignore[attr-defined]
    policy: Path = installed.policy_file  # type: ignore[attr-defined]
    target = spec_dir.parent / REMOTE
    shutil.copytree(spec_dir, target)
    spec = json.loads((target / "kernel.json").read_text())
    spec["metadata"]["kernel_provisioner"]["provisioner_name"] = REMOTE
    (target / "kernel.json").write_text(json.dumps(spec))
    shutil.copyfile(policy, policy.parent / f"{REMOTE}.toml")
    (root / "token").write_text(TOKEN)
    (root / "token").chmod(0o600)


def _config(root: Path, targets: list[str]) -> object:
    from traitlets.config import Config

    return Config(
        {
            "RemoteTeeProvisioner": {
                "hosts": list(targets),
                "host_token_file": str(root / "token"),
                "host_ca_file": str(root / "ca.pem"),
            }
        }
    )


@contextmanager
def _managers_configured(config: object) -> Iterator[None]:
    """kernel_session's helpers make their own KernelManagers; give each the remote hosts' configuration."""
    import jupyter_client.manager as manager

    original = manager.KernelManager

    class Configured(original):  # type: ignore[misc,valid-type]
        def __init__(self, **kwargs: object) -> None:
            super().__init__(config=config, **kwargs)

    manager.KernelManager = Configured  # type: ignore[misc]
    try:
        yield
    finally:
        manager.KernelManager = original  # type: ignore[misc]


async def _concurrent(count: int, config: object) -> list[str]:
    """The failures (as messages) of ``count`` remote kernels started at once."""
    from jupyter_client.manager import AsyncKernelManager

    managers = [AsyncKernelManager(kernel_name=REMOTE, config=config) for _ in range(count)]
    results = await asyncio.gather(*(km.start_kernel() for km in managers), return_exceptions=True)
    failures = [f"{type(r).__name__}: {r}"[:300] for r in results if isinstance(r, BaseException)]
    await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers if km.has_kernel))
    return failures


def run(starts: int = 5, cells: int = 200, concurrent: int = 50) -> dict[str, object]:
    from teelab.kernel.kernelspec import install

    with tempfile.TemporaryDirectory() as scratch, isolated_teelab(Path(scratch)):
        root = Path(scratch)
        installed = install(backend="sim", user=True)
        _remote_kernelspec(installed, root)
        with _agents(root, 3, capacity=max(20, concurrent)) as targets:
            kernels = {"local": "teelab-sim", "remote": REMOTE}
            start_times: dict[str, list[float]] = {k: [] for k in kernels}
            with _managers_configured(_config(root, targets[:1])):
                for name in kernels.values():
                    _start_to_first_reply(name)
                for _ in range(starts):
                    for key, name in kernels.items():
                        start_times[key].append(_start_to_first_reply(name))
                rtts = _round_trips(kernels, cells)
            began = time.perf_counter()
            failures = asyncio.run(_concurrent(concurrent, _config(root, targets)))
            spread_seconds = time.perf_counter() - began
    summary = {
        key: {
            "start_seconds_median": round(median(start_times[key]), 3),
            "rtt_ms_median": round(median(rtts[key]) * 1000, 3),
            "rtt_ms_p99": round(percentile(rtts[key], 99) * 1000, 3),
        }
        for key in kernels
    }
    ratios = {
        "start": round(
            summary["remote"]["start_seconds_median"] / summary["local"]["start_seconds_median"], 3
        ),
        "rtt_median": round(summary["remote"]["rtt_ms_median"] / summary["local"]["rtt_ms_median"], 3),
        "rtt_p99": round(summary["remote"]["rtt_ms_p99"] / summary["local"]["rtt_ms_p99"], 3),
    }
    result = {
        "starts": starts,
        "cells": cells,
        **summary,
        "ratios": ratios,
        "concurrent": {
            "kernels": concurrent,
            "agents": 3,
            "failures": len(failures),
            "failure_reasons": sorted(set(failures))[:5],
            "seconds": round(spread_seconds, 1),
        },
        "goal": {"start": 1.2, "rtt_median": 1.1, "failures": 0},
        "meets_goal": ratios["start"] <= 1.2 and ratios["rtt_median"] <= 1.1 and not failures,
    }
    write_result("remote_hosts", result)
    return result


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:]]
    print(run(*arguments))
