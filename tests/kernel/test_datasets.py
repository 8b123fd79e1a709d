"""Sealed datasets read inside attested kernels: the gateway's session grant, the key broker's release, and
the decrypting reader, end to end with a real gRPC key broker on loopback and real simulated-TEE kernels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from jupyter_client.manager import KernelManager
from traitlets.config import Config

from teelab.sealed_store import services
from teelab.sealed_store.kbs.identity import issue_local_token
from teelab.sealed_store.owner import DataOwner
from teelab.sealed_store.services import ENDPOINT_FILE

from .conftest import KERNEL, KernelEnv
from .test_kernel_manager import run

FRAME = pd.DataFrame(
    {
        "region": ["EU", "US", "EU", "APAC"] * 50,
        "amount": [float(i) for i in range(200)],
        "day": pd.date_range("2026-01-01", periods=200, freq="D"),
    }
)


@pytest.fixture
def owner(broker: object, kernel_env: KernelEnv) -> Iterator[DataOwner]:
    # The operator registers on dana's behalf (the key broker lets only the owner or an admin do that).
    with DataOwner.connect(token_file=services.admin_token_file(), owner="dana") as data_owner:
        yield data_owner


def kernel_for(user: str) -> KernelManager:
    # Each user's server asks for session grants with that user's own token (a grant is only for yourself).
    token = issue_local_token(services.kbs_state_dir(), user)
    settings = {"kbs_user": user, "kbs_token_file": str(token)}
    km = KernelManager(kernel_name=KERNEL, config=Config({"TeeProvisioner": settings}))
    km.start_kernel()
    return km


def read_in_kernel(km: KernelManager, code: str) -> tuple[dict[str, object], str]:
    """Run ``code`` in the kernel; (execute_reply content, output text)."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        return run(kc, "from teelab.sealed_store import read_dataset\n" + code)
    finally:
        kc.stop_channels()


def publish(
    owner: DataOwner, kernel_env: KernelEnv, name: str, *grants: str, policy: str | None = None
) -> None:
    owner.publish(
        FRAME,
        name=name,
        policy_toml=policy if policy is not None else kernel_env.policy.read_text(),
        grants=[(who, None) for who in grants],
    )


def test_a_granted_user_reads_only_what_they_ask_for(owner: DataOwner, kernel_env: KernelEnv) -> None:
    publish(owner, kernel_env, "sales", "user:alice")
    km = kernel_for("alice")
    try:
        content, out = read_in_kernel(
            km,
            "df = read_dataset('sales')\n"
            "print(df.shape, round(df['amount'].sum(), 1), df['day'].dtype)\n"
            "eu = read_dataset('sales', columns=['amount'], filters=[('region', '==', 'EU')])\n"
            "print(list(eu.columns), len(eu))",
        )
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "ok", out
    lines = out.splitlines()
    assert lines[0].startswith(f"(200, 3) {FRAME['amount'].sum():.1f} datetime64")
    assert lines[1] == "['amount'] 100"


def test_group_grants_and_revocation(owner: DataOwner, kernel_env: KernelEnv) -> None:
    publish(owner, kernel_env, "hr", "group:analysts")
    owner.kbs.add_member("analysts", "carol")
    km = kernel_for("carol")
    try:
        assert read_in_kernel(km, "print(len(read_dataset('hr')))")[1] == "200\n"
        owner.kbs.remove_member("analysts", "carol")
        content, _ = read_in_kernel(km, "read_dataset('hr')")
        assert content["status"] == "error" and content["ename"] == "KeyBrokerError"
        assert "this user has no current grant on the dataset" in str(content["evalue"])
    finally:
        km.shutdown_kernel(now=True)


def test_tenants_are_isolated(owner: DataOwner, kernel_env: KernelEnv) -> None:
    publish(owner, kernel_env, "alice-only", "user:alice")
    km = kernel_for("bob")
    try:
        content, _ = read_in_kernel(km, "read_dataset('alice-only')")
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "error" and content["ename"] == "KeyBrokerError"
    evalue = str(content["evalue"])
    assert "the key broker refused 'alice-only': this user has no current grant on the dataset" in evalue
    assert "hint: ask the dataset's owner for a grant" in evalue


def test_a_kernel_outside_the_release_policy_is_refused_despite_a_grant(
    owner: DataOwner, kernel_env: KernelEnv
) -> None:
    publish(
        owner,
        kernel_env,
        "pinned",
        "user:alice",
        policy=f'allow_simulation = true\n[sgx]\nmrenclave = ["{"cd" * 32}"]\n',
    )
    km = kernel_for("alice")
    try:
        content, _ = read_in_kernel(km, "read_dataset('pinned')")
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "error" and content["ename"] == "KeyBrokerError"
    assert "the kernel's evidence does not satisfy the dataset's release policy" in str(content["evalue"])


def test_tampered_parts_are_detected_inside_the_kernel(owner: DataOwner, kernel_env: KernelEnv) -> None:
    publish(owner, kernel_env, "fragile", "user:alice")
    part = next((kernel_env.data / "datasets" / "fragile" / "v1").glob("part-*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    km = kernel_for("alice")
    try:
        content, _ = read_in_kernel(km, "read_dataset('fragile')")
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "error"
    assert content["ename"] == "PartTamperedError", content


def test_without_a_key_broker_the_kernel_starts_and_says_why_it_cannot_read(kernel_env: KernelEnv) -> None:
    assert not (kernel_env.data / "kbs" / ENDPOINT_FILE).exists()
    km = kernel_for("alice")
    try:
        content, _ = read_in_kernel(km, "read_dataset('sales')")
    finally:
        km.shutdown_kernel(now=True)
    assert content["status"] == "error" and content["ename"] == "KeyBrokerError"
    assert "no session grant" in str(content["evalue"]) and "teelab kbs serve" in str(content["evalue"])


def test_read_dataset_outside_an_attested_kernel_says_so() -> None:
    from teelab.sealed_store import read_dataset
    from teelab.session import NotAttested

    with pytest.raises(NotAttested, match="only inside an attested teelab kernel"):
        read_dataset("sales")


def test_session_grant_is_in_the_sealed_bundle_not_on_the_host(
    owner: DataOwner, kernel_env: KernelEnv
) -> None:
    publish(owner, kernel_env, "quiet", "user:alice")
    km = kernel_for("alice")
    try:
        assert read_in_kernel(km, "print(len(read_dataset('quiet')))")[1] == "200\n"
        process = km.provisioner.process  # type: ignore[union-attr]
        assert process is not None
        grant = read_in_kernel(
            km, "import teelab.sealed_store.notebook as n; print(n._release.key_broker.grant)"
        )[1].strip()
        assert grant.count(".") == 2  # a JWT
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        assert grant.encode() not in environ
        assert grant.encode() not in "".join(km.provisioner.host_output).encode()  # type: ignore[union-attr]
    finally:
        km.shutdown_kernel(now=True)


def test_the_session_grant_never_crosses_the_host_in_the_clear(
    owner: DataOwner, kernel_env: KernelEnv, broker: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reaches the key broker through the host, which records every byte of the release."""
    import dataclasses

    from teelab.kernel.session_grants import KeyBrokerGrants
    from teelab.protocols.session import KeyBrokerSection

    from .evil_host import RecordingTcpProxy

    host, _, port = broker.target.rpartition(":")  # type: ignore[attr-defined]
    proxy = RecordingTcpProxy((host, int(port)))
    issue = KeyBrokerGrants.__call__

    async def through_the_host(
        self: KeyBrokerGrants, enclave_key: bytes, controller: bytes
    ) -> KeyBrokerSection | None:
        section = await issue(self, enclave_key, controller)
        assert section is not None
        return dataclasses.replace(section, address=proxy.address)

    monkeypatch.setattr(KeyBrokerGrants, "__call__", through_the_host)
    publish(owner, kernel_env, "wire", "user:alice")
    km = kernel_for("alice")
    try:
        assert read_in_kernel(km, "print(len(read_dataset('wire')))")[1] == "200\n"
        grant = read_in_kernel(
            km, "import teelab.sealed_store.notebook as n; print(n._release.key_broker.grant)"
        )[1].strip()
    finally:
        km.shutdown_kernel(now=True)
    assert len(proxy.seen) > 1000  # the release went through the host
    for piece in [grant, *grant.split(".")]:
        assert piece.encode() not in proxy.seen, "the session grant crossed the host in the clear"


def test_a_kernel_reads_through_a_key_broker_served_over_tls(
    kernel_env: KernelEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway reaches the broker at grpcs:// with a private CA and hands the CA to the kernel in the sealed
    bundle; the kernel's own release goes over TLS too."""
    from teelab.sealed_store.kbs.config import KbsConfig
    from teelab.sealed_store.kbs.server import KbsServer

    from ..sealed_store.kbs.pki import make_pki

    ca, certificate, key = make_pki(tmp_path / "pki")
    state = kernel_env.data / "kbs"
    server = KbsServer(
        KbsConfig(state_dir=state, tls_certificate=certificate, tls_key=key), address="127.0.0.1:0"
    )
    server.start()
    (state / ENDPOINT_FILE).write_text(server.target)
    monkeypatch.setenv("TEELAB_KBS_CA", str(ca))
    try:
        assert server.target.startswith("grpcs://")
        with DataOwner.connect(token_file=services.admin_token_file(), owner="dana") as data_owner:
            publish(data_owner, kernel_env, "sales", "user:alice")
        km = kernel_for("alice")
        try:
            content, out = read_in_kernel(km, "print(len(read_dataset('sales')))")
        finally:
            km.shutdown_kernel(now=True)
        assert content["status"] == "ok", out
        assert out.strip() == "200"
    finally:
        (state / ENDPOINT_FILE).unlink(missing_ok=True)
        server.stop(grace=1)
