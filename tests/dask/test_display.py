"""What a TeeCluster shows of itself, in the notebook (its reprs) and to the JupyterLab panel (the comm
``teelab.dask.attestation``, docs/protocols/dask-attestation-comm.md).

One real cluster (a scheduler and one worker, sim backend) is started, scaled up, has a worker killed and
replaced, is scaled down and closed; the state pushed on a comm the panel opened follows each step. The comm
is ``comm.base_comm.BaseComm`` — the class ipykernel's Comm derives from — with its transport replaced by a
list (a kernel would put the same messages on iopub); the browser test runs the same path through a kernel.
"""

from __future__ import annotations

import html.parser
import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import comm as comm_package
import pytest
from comm.base_comm import BaseComm

from teelab.dask import TeeCluster, comm, display
from teelab.dask.comm import TARGET, AttestationBroadcaster, CommRequestError, decode_request
from teelab.dask.records import NodeAttestation
from tests.dask.conftest import DaskEnv
from tests.dask.test_scale import wait_for


class RecordingComm(BaseComm):
    """A comm the panel opened (``primary=False``): what the kernel sends is kept in ``sent``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed_by_kernel = False
        super().__init__(target_name=TARGET, primary=False)
        comm_package.get_comm_manager().register_comm(self)  # as the kernel's manager does before the handler

    def publish_msg(
        self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None, **keys: Any
    ) -> None:
        if msg_type == "comm_close":
            self.closed_by_kernel = True
        elif msg_type == "comm_msg":
            self.sent.append(json.loads(json.dumps(data)))  # what crosses the wire is JSON

    def deliver(self, data: Any) -> None:
        """A comm_msg from the panel."""
        self.handle_msg({"content": {"comm_id": self.comm_id, "data": data}})

    def states(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == "clusters"]


def open_message(data: Any) -> dict[str, Any]:
    return {"content": {"comm_id": "c1", "target_name": TARGET, "data": data}}


GOOD = {"request": "clusters", "version": 1}


def nodes_of(state: dict[str, Any], cluster_id: str) -> dict[str, dict[str, Any]]:
    for cluster in state["clusters"]:
        if cluster["id"] == cluster_id:
            return {node["name"]: node for node in cluster["nodes"]}
    return {}


def latest(recording: RecordingComm) -> dict[str, Any]:
    return recording.states()[-1]


def until(
    recording: RecordingComm,
    cluster_id: str,
    test: Callable[[dict[str, dict[str, Any]]], bool],
    what: str,
) -> dict[str, dict[str, Any]]:
    """Wait for a state pushed from now on that passes ``test`` (a passing state may be followed by the next
    one before we look: every state is looked at, not only the latest)."""
    seen = len(recording.states())
    found: list[dict[str, dict[str, Any]]] = []

    def passed() -> bool:
        nonlocal seen
        states = recording.states()
        for state in states[max(seen - 1, 0) :]:
            nodes = nodes_of(state, cluster_id)
            if test(nodes):
                found.append(nodes)
                return True
        seen = len(states)
        return False

    wait_for(passed, what)
    return found[0]


def connected(nodes: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(name for name, node in nodes.items() if node["connected"])


class Cells(html.parser.HTMLParser):
    """The text of each table row of the HTML repr, keyed by its data-node."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.tags: list[str] = []
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr" and dict(attrs).get("data-node") is not None:
            self._row = dict(attrs)["data-node"]
            self.rows[self._row or ""] = []
        elif tag == "td" and self._row is not None:
            self.rows[self._row].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self.rows[self._row]:
            self.rows[self._row][-1] += data


# -- the live cluster --------------------------------------------------------------------------------


def test_the_reprs_and_the_panel_state_follow_every_node(dask_env: DaskEnv) -> None:
    panel = RecordingComm()
    comm.broadcaster().on_open(panel, open_message(GOOD))
    assert panel.states() and not panel.closed_by_kernel
    short = dask_env.mrenclave[:16]

    with TeeCluster(n_workers=1, backend="sim", policy=dask_env.policy) as cluster:
        cid = cluster.cluster_id
        nodes = until(
            panel, cid, lambda n: connected(n) == ["0", "scheduler"], "scheduler and worker 0 listed"
        )
        for name, role in (("scheduler", "scheduler"), ("0", "worker")):
            node = nodes[name]
            assert node["role"] == role and node["accepted"] and node["verdict"] == "warning"
            assert node["measurement"] == dask_env.mrenclave and node["tee"] == "sgx" and node["simulated"]
            assert node["controller"]["passed"] is True and node["failure"] is None and node["starts"] == 1
            assert datetime.fromisoformat(node["attested_at"]).tzinfo is not None
        assert nodes["scheduler"]["address"] == cluster.scheduler_address
        assert nodes["0"]["address"] == next(iter(cluster.scheduler_info["workers"]))
        described = next(c for c in latest(panel)["clusters"] if c["id"] == cid)
        assert described["backend"] == "sim" and described["simulated"] and described["status"] == "running"

        # The notebook's text repr: distributed's line, then one line per node.
        lines = repr(cluster).splitlines()
        assert lines[0].startswith(f"{cluster.name}(") and "workers=1" in lines[0]
        rows = {line.split()[1]: line for line in lines[2:4]}
        assert set(rows) == {"scheduler", "0"}
        for line in rows.values():
            assert short in line and "SGX/sim (simulated)" in line and "pass (warning)" in line
        assert nodes["0"]["address"] in rows["0"]
        assert lines[-1] == "(simulated TEE — not confidential)"

        # The HTML repr: LocalCluster's card, with a row per node.
        parser = Cells()
        parser.feed(cluster._repr_html_())
        assert set(parser.rows) == {"scheduler", "0"}
        role, name, verdict, controller, tee, measurement, address, attested = parser.rows["0"]
        assert (role, name, address, tee) == ("worker", "0", nodes["0"]["address"], "SGX/sim (simulated)")
        assert (measurement, controller, verdict) == (short, "pass", "pass (warning)")
        assert attested == nodes["0"]["attested_at"]
        assert "script" not in parser.tags

        # Nothing secret in what the notebook or the panel is shown.
        shown = repr(cluster) + cluster._repr_html_() + json.dumps(panel.sent)
        assert "BEGIN" not in shown and "PRIVATE" not in shown
        for record in cluster.attestation.values():
            assert record.result is not None
            assert record.result["claims"]["report_data"] not in shown  # the raw evidence stays out

        # Scaled up: a new node appears once attested and joined.
        cluster.scale(2)
        nodes = until(panel, cid, lambda n: connected(n) == ["0", "1", "scheduler"], "worker 1 listed")
        assert nodes["1"]["accepted"] and nodes["1"]["role"] == "worker"

        # Killed by the host: listed as not connected, then replaced by a freshly attested node.
        victim = cluster.workers["1"].pid
        os.kill(victim, signal.SIGKILL)
        until(panel, cid, lambda n: not n["1"]["connected"] if "1" in n else False, "worker 1 gone")
        nodes = until(
            panel, cid, lambda n: n.get("1", {}).get("starts") == 2 and n["1"]["connected"], "replaced"
        )
        assert nodes["1"]["accepted"]

        # Scaled down: the node leaves the list.
        cluster.scale(1)
        until(panel, cid, lambda n: sorted(n) == ["0", "scheduler"], "worker 1 removed")

        # The panel asks again on the same comm: the same state, newer sequence number.
        before = latest(panel)["seq"]
        panel.deliver(GOOD)
        assert latest(panel)["seq"] > before and sorted(nodes_of(latest(panel), cid)) == ["0", "scheduler"]

    # Closed: the cluster is no longer listed.
    assert nodes_of(latest(panel), cid) == {}


def test_a_refused_node_is_pushed_with_the_check_that_refused_it(dask_env: DaskEnv, tmp_path: Path) -> None:
    """A policy pinning another image: the scheduler's start is refused, and the panel is told which check
    refused it before the failed cluster is dropped from the list."""
    policy = tmp_path / "other-image.toml"
    policy.write_text(dask_env.policy.read_text().replace(dask_env.mrenclave, "11" * 32))
    panel = RecordingComm()
    comm.broadcaster().on_open(panel, open_message(GOOD))
    with pytest.raises(RuntimeError, match=r"policy\.mrenclave"):
        TeeCluster(n_workers=0, backend="sim", policy=policy)
    refusals = [
        node
        for state in panel.states()
        for cluster in state["clusters"]
        for node in cluster["nodes"]
        if not node["accepted"]
    ]
    assert refusals, panel.states()
    node = refusals[-1]
    assert node["name"] == "scheduler" and node["verdict"] == "contraindicated"
    assert node["failure"]["check"] == "policy.mrenclave" and node["measurement"] == dask_env.mrenclave
    assert not node["connected"] and node["address"] is None
    assert latest(panel)["clusters"] == []  # the cluster that failed to start is no longer listed


# -- strict decoding ---------------------------------------------------------------------------------

BAD = [
    (None, "bad_request"),
    ("clusters", "bad_request"),
    ([GOOD], "bad_request"),
    ({"request": "clusters"}, "bad_request"),
    ({**GOOD, "extra": 1}, "bad_request"),
    ({"request": "clusters", "version": "1"}, "unsupported_version"),
    ({"request": "clusters", "version": True}, "unsupported_version"),
    ({"request": "clusters", "version": 2}, "unsupported_version"),
    ({"request": "scale", "version": 1}, "unknown_request"),
    ({"request": ["clusters"], "version": 1}, "unknown_request"),
]


@pytest.mark.parametrize(("data", "code"), BAD)
def test_anything_but_the_documented_request_is_a_typed_error(data: Any, code: str) -> None:
    with pytest.raises(CommRequestError) as raised:
        decode_request(open_message(data))
    assert raised.value.code == code

    # Opened with it: one error reply, the comm closed, nothing of the state sent.
    broadcaster = AttestationBroadcaster()
    opened = RecordingComm()
    broadcaster.on_open(opened, open_message(data))
    assert opened.sent == [{"type": "error", "version": 1, "error": code, "detail": raised.value.detail}]
    assert opened.closed_by_kernel

    # Sent on an open comm: an error reply, the comm stays open and still answers the real request.
    kept = RecordingComm()
    broadcaster.on_open(kept, open_message(GOOD))
    kept.deliver(data)
    assert kept.sent[-1]["type"] == "error" and kept.sent[-1]["error"] == code and not kept.closed_by_kernel
    kept.deliver(GOOD)
    assert kept.sent[-1]["type"] == "clusters"


@pytest.mark.parametrize("message", [None, [], {"content": None}, {"content": {"data": None}}, {}])
def test_a_message_without_data_is_a_typed_error(message: Any) -> None:
    with pytest.raises(CommRequestError) as raised:
        decode_request(message)
    assert raised.value.code == "bad_request"


def test_the_error_reply_does_not_echo_the_request() -> None:
    opened = RecordingComm()
    AttestationBroadcaster().on_open(
        opened, open_message({"request": "<img src=x onerror=alert(1)>", "version": 1})
    )
    assert "<img" not in json.dumps(opened.sent)


# -- rendering of what a node reported -----------------------------------------------------------------


def refused(detail: str) -> NodeAttestation:
    return NodeAttestation(
        name="1",
        role="worker",
        verdict="contraindicated",
        measurement="ab" * 32,
        controller="fail: CONFIGID carries another controller",
        time=datetime(2026, 12, 3, 5, 0, tzinfo=UTC),
        tee="sgx",
        simulated=True,
        failure=f"controller: {detail}",
    )


def test_a_refused_node_shows_the_failing_check_and_its_words_only_as_text() -> None:
    node = display.node_view(
        refused('<script>alert(1)</script> "quoted"'), address=None, connected=False, starts=1
    )
    assert node.verdict_text == "fail: controller" and node.controller_passed is False
    view = display.ClusterView("c", "n<b>", "running", "sim", True, "tls://127.0.0.1:1", (node,))
    markup = display.render_html(view, "Workers: 0")
    parser = Cells()
    parser.feed(markup)
    assert parser.rows["1"][2] == "fail: controller" and parser.rows["1"][3] == "fail"
    assert "script" not in parser.tags and "b" not in parser.tags
    assert "&lt;script&gt;" in markup and "n&lt;b&gt;" in markup
    text = display.render_text(view)
    assert "fail: controller" in text.splitlines()[1] and "—" in text.splitlines()[1]
    assert node.to_json()["failure"] == {
        "check": "controller",
        "detail": '<script>alert(1)</script> "quoted"',
    }
