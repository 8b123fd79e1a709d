"""The JupyterLab panel's view of this kernel's Dask clusters: the Jupyter comm ``teelab.dask.attestation``.

The protocol, its messages and its adversaries: docs/protocols/dask-attestation-comm.md. In short:

- the panel opens a comm with the target ``teelab.dask.attestation`` on the current notebook's kernel, data
  ``{"request": "clusters", "version": 1}``, and may send the same request again on it later;
- the kernel answers with the whole state, ``{"type": "clusters", "version": 1, "seq": n, "clusters": [...]}``
  (each node's public facts, :mod:`teelab.dask.display`), and pushes the state again on every open comm
  whenever a node is attested or refused, a worker joins or leaves, or a cluster closes;
- a kernel with no cluster yet has no target (nothing of Dask is imported until a cluster is made): the kernel
  closes the panel's comm, which the panel shows as "no cluster". The first cluster registers the target and
  opens a comm *from the kernel* with the state, so a panel already open learns about it at once.

The kernel's handler accepts exactly the one documented request; anything else gets a typed error
(``{"type": "error", "version": 1, "error": CODE, "detail": TEXT}``) and, on open, the comm is closed. The
payload goes over the kernel's own channels (CURVE-encrypted, HMAC-signed Jupyter messages), but anyone who
can run code in this kernel can forge it: the panel is the kernel's report to its user; what anchors trust
is the gateway's verdict on the kernel itself.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol, SupportsIndex

from teelab.dask.display import cluster_view
from teelab.dask.records import NodeAttestation
from teelab.errors import TeelabError

log = logging.getLogger(__name__)

TARGET = "teelab.dask.attestation"
VERSION = 1
REQUEST = "clusters"


class CommRequestError(TeelabError):
    """A comm message that is not the one documented request: ``code`` is what the reply's ``error`` says."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"teelab.dask.attestation: {code}: {detail}")
        self.code, self.detail = code, detail


class CommLike(Protocol):
    """The part of ``comm.base_comm.BaseComm`` (ipykernel's Comm) the handler uses."""

    comm_id: str

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None: ...

    def close(
        self, data: Any = None, metadata: Any = None, buffers: Any = None, deleting: bool = False
    ) -> None: ...

    def on_msg(self, callback: Callable[[dict[str, Any]], None] | None) -> None: ...

    def on_close(self, callback: Callable[[dict[str, Any]], None] | None) -> None: ...


def decode_request(message: Any) -> None:
    """Accept exactly ``{"request": "clusters", "version": 1}`` as a comm message's data; else raise
    :class:`CommRequestError`. Nothing of the message is echoed back (the reply names only our own fields)."""
    content = message.get("content") if isinstance(message, dict) else None
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, dict):
        raise CommRequestError("bad_request", "the request must be a JSON object")
    if set(data) != {"request", "version"}:
        raise CommRequestError("bad_request", "a request has exactly the fields 'request' and 'version'")
    version = data["version"]
    if type(version) is not int or version != VERSION:  # bool is an int subclass: not a version
        raise CommRequestError("unsupported_version", f"this kernel speaks version {VERSION}")
    if data["request"] != REQUEST:
        raise CommRequestError("unknown_request", f"the only request is '{REQUEST}'")


def error_message(error: CommRequestError) -> dict[str, Any]:
    return {"type": "error", "version": VERSION, "error": error.code, "detail": error.detail}


class ObservedRecords(list[NodeAttestation]):
    """The controller's record list, telling the broadcaster about every node attested or refused."""

    def __init__(self, records: Iterable[NodeAttestation], changed: Callable[[], None]) -> None:
        super().__init__(records)
        self._changed = changed

    def append(self, record: NodeAttestation) -> None:
        super().append(record)
        self._changed()

    def extend(self, records: Iterable[NodeAttestation]) -> None:
        super().extend(records)
        self._changed()

    def insert(self, index: SupportsIndex, record: NodeAttestation) -> None:
        super().insert(index, record)
        self._changed()


class AttestationBroadcaster:
    """This process's clusters and the comms the state is pushed on (one per process: :func:`broadcaster`).

    ``open_comm`` makes a comm from the kernel (``comm.create_comm`` in a kernel); ``register_target``
    registers the handler for comms the panel opens. Both are ``None`` outside a kernel: then nothing is sent
    anywhere and only the notebook display uses the views."""

    def __init__(
        self,
        open_comm: Callable[[dict[str, Any]], CommLike] | None = None,
        register_target: Callable[[str, Callable[[CommLike, dict[str, Any]], None]], None] | None = None,
    ) -> None:
        self._clusters: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._comms: dict[str, CommLike] = {}
        self._announced: CommLike | None = None
        self._open_comm = open_comm
        self._register_target = register_target
        self._target_registered = False
        self._seq = 0
        self._lock = threading.RLock()

    # -- the clusters ------------------------------------------------------------------------------------

    def watch(self, cluster: Any) -> None:
        """Start listing ``cluster`` (called by ``TeeCluster`` before its first node starts)."""
        controller = cluster.controller
        if not isinstance(controller.records, ObservedRecords):
            controller.records = ObservedRecords(controller.records, self.changed)
        with self._lock:
            self._clusters[controller.cluster_id] = cluster
            if self._register_target is not None and not self._target_registered:
                self._register_target(TARGET, self.on_open)
                self._target_registered = True
            if self._open_comm is not None and self._announced is None:
                self._announce(self._open_comm)
        self.changed()  # the other open comms (a newer seq than the announcement's: harmless to it)

    def forget(self, cluster: Any) -> None:
        """Stop listing a closed cluster, and say so on every comm."""
        with self._lock:
            self._clusters.pop(cluster.controller.cluster_id, None)
        self.changed()

    def changed(self) -> None:
        """Push the whole state on every open comm (a node attested or refused, a worker joined or left)."""
        with self._lock:
            if not self._comms:
                return
            state = self.state()
            for comm in list(self._comms.values()):
                self._send(comm, state)

    def state(self) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            clusters = list(self._clusters.values())
            seq = self._seq
        views = []
        for cluster in clusters:
            try:
                views.append(cluster_view(cluster).to_json())
            except (AttributeError, KeyError, RuntimeError) as error:  # still being constructed
                log.debug("teelab dask: cluster not listed yet: %s", error)
        return {"type": "clusters", "version": VERSION, "seq": seq, "clusters": views}

    # -- the comms ---------------------------------------------------------------------------------------

    def on_open(self, comm: CommLike, message: dict[str, Any]) -> None:
        """The comm target's handler: a panel opened a comm on this kernel."""
        try:
            decode_request(message)
        except CommRequestError as error:
            self._send(comm, error_message(error))
            comm.close()
            return
        with self._lock:
            self._keep(comm)
            self._send(comm, self.state())

    def _on_msg(self, comm: CommLike) -> Callable[[dict[str, Any]], None]:
        def handle(message: dict[str, Any]) -> None:
            try:
                decode_request(message)
            except CommRequestError as error:
                self._send(comm, error_message(error))
                return
            self._send(comm, self.state())

        return handle

    def _announce(self, open_comm: Callable[[dict[str, Any]], CommLike]) -> None:
        try:
            comm = open_comm(self.state())
        except (
            Exception
        ) as error:  # no frontend channel (e.g. a kernel without iopub): the display still works
            log.debug("teelab dask: no comm to the frontend: %s", error)
            return
        self._announced = comm
        self._keep(comm)

    def _keep(self, comm: CommLike) -> None:
        comm_id = comm.comm_id
        self._comms[comm_id] = comm
        comm.on_msg(self._on_msg(comm))
        comm.on_close(lambda _message: self._closed(comm_id))

    def _closed(self, comm_id: str) -> None:
        with self._lock:
            self._comms.pop(comm_id, None)
            if self._announced is not None and self._announced.comm_id == comm_id:
                self._announced = None

    def _send(self, comm: CommLike, data: dict[str, Any]) -> None:
        try:
            comm.send(data)
        except Exception as error:  # a comm the frontend closed meanwhile; never fail the cluster for it
            log.debug("teelab dask: comm %s: %s", comm.comm_id, error)
            self._closed(comm.comm_id)


def _kernel_broadcaster() -> AttestationBroadcaster:
    """Inside an IPython kernel: comms through its comm manager; anywhere else, none."""
    kernel_module = sys.modules.get("ipykernel.kernelbase")
    if kernel_module is None or not kernel_module.Kernel.initialized():
        return AttestationBroadcaster()
    import comm as comm_package

    def open_comm(data: dict[str, Any]) -> CommLike:
        made: CommLike = comm_package.create_comm(target_name=TARGET, data=data)
        return made

    def register_target(name: str, handler: Callable[[CommLike, dict[str, Any]], None]) -> None:
        comm_package.get_comm_manager().register_target(name, handler)

    return AttestationBroadcaster(open_comm, register_target)


_broadcaster: AttestationBroadcaster | None = None
_broadcaster_lock = threading.Lock()


def broadcaster() -> AttestationBroadcaster:
    global _broadcaster
    with _broadcaster_lock:
        if _broadcaster is None:
            _broadcaster = _kernel_broadcaster()
        return _broadcaster


def watch(cluster: Any) -> None:
    try:
        broadcaster().watch(cluster)
    except Exception:  # a display aid: never the reason a cluster fails to start
        log.warning("teelab dask: the attestation panel will not list this cluster", exc_info=True)


def changed() -> None:
    try:
        broadcaster().changed()
    except Exception:
        log.warning("teelab dask: the attestation panel was not updated", exc_info=True)


def forget(cluster: Any) -> None:
    try:
        broadcaster().forget(cluster)
    except Exception:
        log.warning("teelab dask: the attestation panel was not updated", exc_info=True)
