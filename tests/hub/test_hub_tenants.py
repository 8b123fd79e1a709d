"""teelab under a real JupyterHub: three users, two groups, every cross-tenant attempt refused.

One hub for the module (configurable-http-proxy, the teelab-kbs service, SQLite); alice, bob and carol each
sign in through the hub's login form and the OAuth redirects, and get their server spawned once. Groups:
analysts = {alice, bob}, operators = {carol}. alice's sample-sales is granted to group:analysts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from teelab.errors import KeyBrokerError
from teelab.extension.hub.client import HubUser
from teelab.extension.hub.demo import HubProcess
from teelab.sealed_store.kbs.client import KbsClient

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol")
READ = "from teelab.sealed_store import read_dataset\nprint('rows', len(read_dataset('sample-sales')))"


@pytest.fixture(scope="module")
def users(hub: HubProcess) -> Iterator[dict[str, HubUser]]:
    signed_in = {}
    for name in USERS:
        user = HubUser(hub, name)
        answer = user.login()
        assert answer.status_code == 302, answer.text
        user.spawn()
        signed_in[name] = user
    yield signed_in


@pytest.fixture(scope="module")
def kernels(users: dict[str, HubUser]) -> dict[str, str]:
    """One attested teelab-sim kernel per user, started through the user's own server."""
    return {name: user.start_kernel()["id"] for name, user in users.items()}


def kbs_as(hub: HubProcess, user: str) -> KbsClient:
    """The key broker as ``user`` (a hub token of theirs: the broker asks the hub whose it is)."""
    return KbsClient(hub.kbs_address, hub.user_token(user, "test: direct key broker call"))


def test_wrong_password_is_refused(hub: HubProcess) -> None:
    answer = HubUser(hub, "alice").login(password="not-the-password")
    assert answer.status_code == 403


def test_alice_kernel_is_attested_and_reads_her_dataset(
    users: dict[str, HubUser], kernels: dict[str, str]
) -> None:
    alice = users["alice"]
    record = alice.request("GET", f"teelab/api/kernels/{kernels['alice']}/attestation")
    assert record.status_code == 200, record.text
    body = record.json()
    assert body["ok"] is True and body["badge"]["level"] == "simulated"
    assert body["attestation"]["policy_id"] == "teelab-sim"
    output, reply = alice.run_cell(kernels["alice"], READ)
    assert reply["status"] == "ok", output
    assert "rows 3000" in output


def test_group_member_reads_outsider_is_refused_with_reason(
    users: dict[str, HubUser], kernels: dict[str, str]
) -> None:
    output, reply = users["bob"].run_cell(kernels["bob"], READ)
    assert reply["status"] == "ok", output
    assert "rows 3000" in output
    output, reply = users["carol"].run_cell(kernels["carol"], READ)
    assert reply["status"] == "error"
    assert "no current grant on the dataset" in output, output


@pytest.mark.parametrize(("owner", "intruder"), [(o, i) for o in USERS for i in USERS if o != i])
def test_no_user_reaches_another_users_server(
    users: dict[str, HubUser], kernels: dict[str, str], owner: str, intruder: str
) -> None:
    thief = users[intruder]
    paths = [
        "api/kernels",
        f"api/kernels/{kernels[owner]}",
        "teelab/api/kernels",
        f"teelab/api/kernels/{kernels[owner]}/attestation",
        "teelab/api/datasets",
        "teelab/api/policy?kernel=teelab-sim",
    ]
    for path in paths:
        answer = thief.request("GET", path, owner=owner)
        assert answer.status_code == 403, (path, answer.status_code)
    writes = [
        ("POST", "api/kernels", {"name": "teelab-sim"}),
        ("POST", "teelab/api/datasets/sample-sales/grants", {"principal": f"user:{intruder}"}),
        ("DELETE", "teelab/api/datasets/sample-sales/grants/group:analysts", None),
        ("DELETE", f"api/kernels/{kernels[owner]}", None),
    ]
    for method, path, body in writes:
        answer = thief.request(method, path, owner=owner, json=body)
        assert answer.status_code == 403, (method, path, answer.status_code)
    # The kernel's websocket: the hub does not let the intruder's cookie open it.
    url = thief.server_url(f"api/kernels/{kernels[owner]}/channels", owner).replace("http://", "ws://")
    cookies = "; ".join(f"{c.name}={c.value}" for c in thief.session.cookies)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, header=[f"Cookie: {cookies}"], timeout=30)
    assert refused.value.status_code in (302, 403)


def test_owner_reaches_own_server(users: dict[str, HubUser], kernels: dict[str, str]) -> None:
    for name, user in users.items():
        listed = user.request("GET", "teelab/api/kernels")
        assert listed.status_code == 200
        assert [k["kernel_id"] for k in listed.json()["kernels"]] == [kernels[name]]


def test_dataset_administration_is_the_owners(hub: HubProcess, users: dict[str, HubUser]) -> None:
    # bob, through his own server, may not grant, revoke or delete alice's dataset: the key broker refuses.
    bob = users["bob"]
    grant = bob.request("POST", "teelab/api/datasets/sample-sales/grants", json={"principal": "user:carol"})
    assert grant.status_code == 403, grant.text
    revoke = bob.request("DELETE", "teelab/api/datasets/sample-sales/grants/group%3Aanalysts")
    assert revoke.status_code == 403, revoke.text
    with kbs_as(hub, "bob") as kbs, pytest.raises(KeyBrokerError) as refused:
        kbs.delete_dataset("sample-sales")
    assert refused.value.reason in ("forbidden", "owner_mismatch")
    # carol operates the broker (custom:teelab:kbs:operate) but is no broker admin: she cannot re-policy it.
    with kbs_as(hub, "carol") as kbs, pytest.raises(KeyBrokerError):
        kbs.set_release_policy("sample-sales", release_policy_toml='id = "weak"\nallow_simulation = true\n')
    # Audit: an outsider reads neither the dataset's entries nor the whole log; its owner reads its entries.
    for outsider in ("bob", "carol"):
        with kbs_as(hub, outsider) as kbs:
            with pytest.raises(KeyBrokerError):
                kbs.audit(dataset="sample-sales")
            with pytest.raises(KeyBrokerError):
                kbs.audit()
    with kbs_as(hub, "alice") as kbs:
        entries = kbs.audit(dataset="sample-sales").records
    assert entries, "alice reads her dataset's audit entries"
    assert any(entry.entry().get("actor") == "user:alice" or "alice" in entry.body for entry in entries)


def _service_session(user: HubUser, path: str) -> Any:
    return user.session.get(f"{user.hub.url}/services/teelab-kbs/{path}", timeout=60)


def test_operator_sees_every_verdict_never_data(users: dict[str, HubUser], kernels: dict[str, str]) -> None:
    answer = _service_session(users["carol"], "api/kernels")
    assert answer.status_code == 200, answer.text
    servers = {entry["user"]: entry for entry in answer.json()["servers"]}
    assert set(servers) == set(USERS)
    for name in USERS:
        (kernel,) = servers[name]["kernels"]
        assert kernel["kernel_id"] == kernels[name]
        assert kernel["badge"]["level"] == "simulated"
        assert set(kernel) <= {
            "kernel_id",
            "kernel_name",
            "backend",
            "started_at",
            "running",
            "ok",
            "simulated",
            "badge",
        }
    page = _service_session(users["carol"], "")
    assert page.status_code == 200 and kernels["alice"] in page.text
    for outsider in ("alice", "bob"):
        assert _service_session(users[outsider], "api/kernels").status_code == 403
        assert _service_session(users[outsider], "").status_code == 403


def test_revocation_stops_the_next_read(
    hub: HubProcess, users: dict[str, HubUser], kernels: dict[str, str]
) -> None:
    alice = users["alice"]
    revoke = alice.request("DELETE", "teelab/api/datasets/sample-sales/grants/group%3Aanalysts")
    assert revoke.status_code == 204, revoke.text
    output, reply = users["bob"].run_cell(kernels["bob"], READ)
    assert reply["status"] == "error", output
    regrant = alice.request(
        "POST", "teelab/api/datasets/sample-sales/grants", json={"principal": "group:analysts"}
    )
    assert regrant.status_code == 201, regrant.text
    output, reply = users["bob"].run_cell(kernels["bob"], READ)
    assert reply["status"] == "ok", output


def test_granular_authorizer_needs_the_dataset_scope(hub: HubProcess, users: dict[str, HubUser]) -> None:
    """A token of alice's that may access her server but lacks the teelab dataset scopes: kernels yes,
    datasets no. Her own (browser) session has them."""
    narrow = hub.api(
        "POST", "users/alice/tokens", {"scopes": ["access:servers!user=alice"], "expires_in": 600}
    )
    headers = {"Authorization": f"token {narrow['token']}"}
    import requests

    base = f"{hub.url}/user/alice/teelab/api"
    assert users["alice"].request("GET", "teelab/api/datasets").status_code == 200
    assert requests.get(f"{base}/kernels", headers=headers, timeout=30).status_code == 200
    assert requests.get(f"{base}/datasets", headers=headers, timeout=30).status_code == 403
    # Last in this module: the server refuses a streamed upload before reading its body and closes that connection, which
    # configurable-http-proxy may still reuse once (a 503 for the next request on it).
    upload = requests.post(f"{base}/datasets?name=x", data=b"a\n1\n", headers=headers, timeout=30)
    assert upload.status_code == 403
