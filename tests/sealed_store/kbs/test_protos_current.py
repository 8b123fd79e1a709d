"""The committed gRPC modules are exactly what ``make protos`` generates from protos/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_generated_modules_are_current(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [str(p) for p in generated] == [
        "enclave_runtime/agent/v1/__init__.py",
        "enclave_runtime/agent/v1/host_pb2.py",
        "enclave_runtime/agent/v1/host_pb2.pyi",
        "enclave_runtime/agent/v1/host_pb2_grpc.py",
        "sealed_store/kbs/v1/__init__.py",
        "sealed_store/kbs/v1/kbs_pb2.py",
        "sealed_store/kbs/v1/kbs_pb2.pyi",
        "sealed_store/kbs/v1/kbs_pb2_grpc.py",
    ]
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (REPO / p).read_bytes()]
    assert not stale, f"run `make protos` and commit: {stale} differ from protos/"


def test_generated_imports_point_at_the_owning_package() -> None:
    from teelab.sealed_store.kbs.v1 import kbs_pb2, kbs_pb2_grpc

    text = (REPO / "sealed_store/kbs/v1/kbs_pb2_grpc.py").read_text()
    assert "from teelab.sealed_store.kbs.v1 import kbs_pb2" in text
    assert "from teelab.kbs" not in text
    assert kbs_pb2_grpc.KeyBrokerStub is not None
    assert kbs_pb2.DESCRIPTOR.package == "teelab.kbs.v1"
    assert "KeyBroker" in kbs_pb2.DESCRIPTOR.services_by_name
