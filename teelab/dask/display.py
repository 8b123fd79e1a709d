"""What a :class:`~teelab.dask.TeeCluster` shows of itself: one row per node with its attestation verdict.

The same rows feed the notebook's display (``_repr_html_`` and the text ``repr``, beside what
``LocalCluster`` shows) and the JupyterLab panel (:mod:`teelab.dask.comm`). A row carries public facts only —
the node's name, role, address, TEE, measurement, the controller check, the verdict and the failing check, when
it was attested — never a key, a certificate, a grant or the raw evidence: a notebook's outputs are saved with
the notebook and may be shared.

Everything that reaches HTML is escaped here (a node's failure detail can quote what the node said, and the
node is launched by the host).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from teelab.dask.records import NodeAttestation
from teelab.timeutil import isoformat

_SHORT_HASH = 16  # hex characters of the measurement shown in the table (the full value is in the title)
_SIMULATED_TEXT = "simulated TEE — not confidential"


@dataclass(frozen=True)
class NodeView:
    """One node as the display shows it; ``to_json`` is the comm message's node (docs/protocols/)."""

    name: str
    role: str
    address: str | None
    connected: bool
    verdict: str
    accepted: bool
    tee: str | None
    simulated: bool
    measurement: str | None
    controller_passed: bool | None
    controller_detail: str
    failure_check: str | None
    failure_detail: str | None
    attested_at: str
    starts: int  # how many times this name was started (> 1: replaced)

    @property
    def measurement_short(self) -> str:
        return self.measurement[:_SHORT_HASH] if self.measurement else "—"

    @property
    def verdict_text(self) -> str:
        if self.accepted:
            return "pass" if self.verdict == "affirming" else f"pass ({self.verdict})"
        return f"fail: {self.failure_check}" if self.failure_check else f"fail ({self.verdict})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "address": self.address,
            "connected": self.connected,
            "verdict": self.verdict,
            "accepted": self.accepted,
            "tee": self.tee,
            "simulated": self.simulated,
            "measurement": self.measurement,
            "controller": {"passed": self.controller_passed, "detail": self.controller_detail},
            "failure": (
                None
                if self.failure_check is None
                else {"check": self.failure_check, "detail": self.failure_detail or ""}
            ),
            "attested_at": self.attested_at,
            "starts": self.starts,
        }


@dataclass(frozen=True)
class ClusterView:
    id: str
    name: str
    status: str
    backend: str
    simulated: bool
    scheduler_address: str
    nodes: tuple[NodeView, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "backend": self.backend,
            "simulated": self.simulated,
            "scheduler_address": self.scheduler_address,
            "nodes": [node.to_json() for node in self.nodes],
        }


def split_outcome(outcome: str) -> tuple[bool | None, str]:
    """``pass: detail`` / ``fail: detail`` / ``not checked`` (records.controller_outcome) → (passed, detail)."""
    verdict, _, detail = outcome.partition(": ")
    if verdict == "pass":
        return True, detail
    if verdict == "fail":
        return False, detail
    return None, outcome


def node_view(record: NodeAttestation, *, address: str | None, connected: bool, starts: int) -> NodeView:
    check, detail = (None, None)
    if record.failure is not None:
        check, _, detail = record.failure.partition(": ")
    elif not record.accepted:
        check, detail = "verdict", record.verdict
    passed, controller_detail = split_outcome(record.controller)
    return NodeView(
        name=record.name,
        role=record.role,
        address=address,
        connected=connected,
        verdict=record.verdict,
        accepted=record.accepted,
        tee=record.tee,
        simulated=record.simulated,
        measurement=record.measurement,
        controller_passed=passed,
        controller_detail=controller_detail,
        failure_check=check,
        failure_detail=detail,
        attested_at=isoformat(record.time),
        starts=starts,
    )


def cluster_view(cluster: Any) -> ClusterView:
    """The cluster's current nodes (the scheduler, then each worker its spec names), each with its latest
    record. Read from another thread than the cluster's loop: every collection is copied first."""
    records: list[NodeAttestation] = list(cluster.controller.records)
    latest: dict[str, NodeAttestation] = {}
    starts: dict[str, int] = {}
    for record in records:
        latest[record.name] = record
        starts[record.name] = starts.get(record.name, 0) + 1
    info = getattr(cluster, "scheduler_info", None) or {}
    connected = {
        str(worker.get("name")): address for address, worker in dict(info.get("workers", {})).items()
    }
    status = _status(cluster)
    names = ["scheduler", *sorted((str(n) for n in dict(getattr(cluster, "worker_spec", {}))), key=_order)]
    nodes = []
    for name in names:
        if name not in latest:
            continue  # being launched: no verdict yet
        record = latest[name]
        if name == "scheduler":
            address: str | None = cluster.controller.scheduler_address if record.accepted else None
            is_connected = record.accepted and status == "running"
        else:
            address = connected.get(name)
            is_connected = address is not None
        nodes.append(node_view(record, address=address, connected=is_connected, starts=starts[name]))
    backend = cluster.controller.backend
    return ClusterView(
        id=cluster.controller.cluster_id,
        name=str(cluster.name),
        status=status,
        backend=str(backend.name),
        simulated=bool(backend.simulated),
        scheduler_address=cluster.controller.scheduler_address,
        nodes=tuple(nodes),
    )


def _order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _status(cluster: Any) -> str:
    status = getattr(cluster, "status", None)
    return str(getattr(status, "name", "created"))


# -- text ----------------------------------------------------------------------------------------------


def render_text(view: ClusterView) -> str:
    """A plain table, one node a line (the text ``repr`` after distributed's own first line)."""
    header = ("role", "name", "verdict", "controller", "tee", "measurement", "address", "attested at")
    rows = [header]
    for node in view.nodes:
        rows.append(
            (
                node.role,
                node.name,
                node.verdict_text,
                _controller_text(node),
                _tee_text(node, view.backend),
                node.measurement_short,
                node.address or "—",
                node.attested_at,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if view.simulated:
        lines.append(f"({_SIMULATED_TEXT})")
    return "\n".join(lines)


def _tee_text(node: NodeView, backend: str) -> str:
    tee = (node.tee or "?").upper()
    return f"{tee}/{backend}" + (" (simulated)" if node.simulated else "")


def _controller_text(node: NodeView) -> str:
    return {True: "pass", False: "fail", None: "not checked"}[node.controller_passed]


# -- HTML ----------------------------------------------------------------------------------------------

_E = html.escape
_PASS, _FAIL, _WARN = "#2e7d32", "#c62828", "#e65100"


def render_html(view: ClusterView, summary: str) -> str:
    """LocalCluster's card (its icon, type, name, workers) with an attestation table; ``summary`` is the
    line of counts distributed shows (workers, threads)."""
    rows = "".join(_html_row(node, view.backend) for node in view.nodes)
    simulated = (
        f'<p style="color: {_WARN}; font-weight: bold; margin: 4px 0;">⚠ {_E(_SIMULATED_TEXT)}</p>'
        if view.simulated
        else ""
    )
    return (
        '<div class="teelab-dask-cluster" data-teelab="dask-cluster" '
        f'data-cluster-id="{_E(view.id)}">'
        '<div style="width: 24px; height: 24px; background-color: #e1e1e1; border: 3px solid #9D9D9D; '
        'border-radius: 5px; position: absolute;"></div>'
        '<div style="margin-left: 48px;">'
        '<h3 style="margin-bottom: 0px; margin-top: 0px;">TeeCluster</h3>'
        f'<p style="color: #9D9D9D; margin-bottom: 0px;">{_E(view.name)} · {_E(view.status)} · '
        f"{_E(view.scheduler_address)} · backend {_E(view.backend)}</p>"
        f"<p>{_E(summary)}</p>"
        f"{simulated}"
        '<div style="overflow-x: auto;"><table style="text-align: left; white-space: nowrap;">'
        "<thead><tr><th>role</th><th>name</th><th>verdict</th><th>controller</th><th>TEE</th>"
        "<th>measurement</th><th>address</th><th>attested at</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></div></div>"
    )


def _html_row(node: NodeView, backend: str) -> str:
    colour = (_WARN if node.simulated or node.verdict != "affirming" else _PASS) if node.accepted else _FAIL
    controller_colour = {True: _PASS, False: _FAIL, None: _WARN}[node.controller_passed]
    title = node.failure_detail if node.failure_detail else node.verdict
    replaced = f" (started {node.starts}×)" if node.starts > 1 else ""
    return (
        f'<tr data-node="{_E(node.name)}" data-verdict="{"pass" if node.accepted else "fail"}">'
        f"<td>{_E(node.role)}</td><td>{_E(node.name)}{_E(replaced)}</td>"
        f'<td style="color: {colour}; font-weight: bold;" title="{_E(title)}">{_E(node.verdict_text)}</td>'
        f'<td style="color: {controller_colour};" title="{_E(node.controller_detail)}">'
        f"{_E(_controller_text(node))}</td>"
        f"<td>{_E(_tee_text(node, backend))}</td>"
        f'<td><code title="{_E(node.measurement or "")}">{_E(node.measurement_short)}</code></td>'
        f"<td><code>{_E(node.address or '—')}</code></td>"
        f"<td>{_E(node.attested_at)}</td></tr>"
    )


# -- the cluster's reprs ---------------------------------------------------------------------------------


def summary(cluster: Any) -> str:
    workers = dict((getattr(cluster, "scheduler_info", None) or {}).get("workers", {}))
    threads = sum(int(worker.get("nthreads", 0)) for worker in workers.values())
    return f"Workers: {len(workers)} · Total threads: {threads}"


def text_repr(cluster: Any, distributed_repr: Callable[[], str]) -> str:
    """distributed's one line (name, address, workers, threads), then the attestation table."""
    try:
        first = distributed_repr()
        view = cluster_view(cluster)
    except (AttributeError, KeyError):  # not constructed yet (e.g. in an error raised by __init__)
        return f"<{type(cluster).__name__} (not started)>"
    return f"{first}\n{render_text(view)}" if view.nodes else first


def html_repr(cluster: Any) -> str:
    try:
        view = cluster_view(cluster)
    except (AttributeError, KeyError):
        return f"<p>{_E(type(cluster).__name__)} (not started)</p>"
    return render_html(view, summary(cluster))
