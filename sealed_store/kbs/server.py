"""``KbsServer``: the key broker on a gRPC address, with an explicit lifecycle.

    server = KbsServer(KbsConfig(state_dir=...), address="127.0.0.1:0")
    port = server.start()        # opens keys, tokens and the database; binds; serves
    ...
    server.stop()                # stops accepting, finishes calls in flight (grace), closes the database

``address`` with port 0 binds a free port; ``start`` returns the bound port. The clock is injectable: every
time the broker judges (nonce and grant expiry, collateral validity, audit timestamps) comes from it.
Plaintext gRPC is acceptable for the protocol's secrets (data keys and grants travel HPKE-sealed), not for
the bearer tokens: beyond loopback, give ``KbsConfig.tls_certificate`` and ``tls_key`` (``target`` is then
``grpcs://host:port``).

The server is grpc.aio on an event loop in a thread of its own, so the caller's thread stays free (tests,
the benchmark and ``teelab kbs serve`` all drive it from ordinary synchronous code). Measured against
gRPC's thread-pool server on 2 cores: ~20% less CPU per release and 10-25% more releases per second.

Evidence is never verified on the event loop: releases run in threads of their own (``kbs-evidence``; one
with SQLite and ``process`` durability, where a release is CPU under one interpreter lock and more threads
only add switching; the configured worker count otherwise), so a flood of slow evidence leaves Challenge,
GetInfo and the administrative calls answering. The store is thread-safe: SQLite's writes queue on one
lock and each audit entry is appended to the head read inside its own write transaction, so the chain keeps
its order whichever thread commits.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import grpc

from teelab.errors import ConfigError
from teelab.sealed_store.kbs.broker import KeyBroker
from teelab.sealed_store.kbs.config import KbsConfig
from teelab.sealed_store.kbs.release import Clock
from teelab.sealed_store.kbs.service import DEFAULT_MAX_PENDING_EVIDENCE, KbsService
from teelab.sealed_store.kbs.transport import TLS_SCHEME, ServerTls
from teelab.timeutil import utcnow

log = logging.getLogger("teelab.kbs")

DEFAULT_ADDRESS = "127.0.0.1:7443"


def tune_gc_for_serving() -> None:
    """For a process that only serves the KBS (``teelab kbs serve``, the benchmark); not for libraries.

    Every release allocates thousands of short-lived objects, and with the default thresholds the cyclic
    collector ran several times per release, its full passes walking the whole heap of gRPC, SQLAlchemy and
    cryptography objects loaded at start-up: about a third of the server's CPU under load (profiled with
    py-spy). Freezing the start-up heap takes it out of every collection, and a larger young generation
    makes collections rarer; garbage is still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


class KbsServer:
    def __init__(
        self,
        config: KbsConfig | None = None,
        *,
        address: str = DEFAULT_ADDRESS,
        clock: Clock = utcnow,
        max_pending_evidence: int = DEFAULT_MAX_PENDING_EVIDENCE,
    ) -> None:
        self.config = config or KbsConfig()
        self.address = address
        self.clock = clock
        self.max_pending_evidence = max_pending_evidence
        self.port: int | None = None
        self.broker: KeyBroker | None = None
        self.service: KbsService | None = None  # its ``junk`` meter counts refused junk per peer
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._evidence_executor: ThreadPoolExecutor | None = None
        self._tls: ServerTls | None = None

    @property
    def target(self) -> str:
        """``host:port`` a client connects to (after start)."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        host = self.address.rsplit(":", 1)[0]
        return f"{TLS_SCHEME if self._tls else ''}{host}:{self.port}"

    def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        certificate, key = self.config.tls_certificate, self.config.tls_key
        if (certificate is None) != (key is None):
            raise ConfigError("TLS needs both a certificate and its private key")
        self._tls = ServerTls.load(certificate, key) if certificate and key else None
        broker = KeyBroker(self.config, clock=self.clock)
        self._stopped.clear()
        threads = self.config.threads
        self._executor = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kbs") if threads > 0 else None
        )
        self._evidence_executor = ThreadPoolExecutor(
            max_workers=max(threads, 1), thread_name_prefix="kbs-evidence"
        )
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="kbs-grpc", daemon=True)
        thread.start()
        try:
            server, port = asyncio.run_coroutine_threadsafe(self._bind(broker), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._shutdown_executor()
            broker.close()
            raise
        self.broker, self._server, self.port = broker, server, port
        self._loop, self._thread = loop, thread
        log.info("key broker listening on %s (state %s)", self.target, self.config.state_dir)
        return port

    async def _bind(self, broker: KeyBroker) -> tuple[grpc.aio.Server, int]:
        options = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max(self.config.threads, 4) * 256)
        self.service = KbsService(
            broker,
            self._executor,
            evidence_executor=self._evidence_executor,
            max_pending_evidence=self.max_pending_evidence,
        )
        server.add_generic_rpc_handlers((self.service.handler(),))
        try:
            if self._tls is not None:
                credentials = grpc.ssl_server_credentials(
                    [(self._tls.private_key, self._tls.certificate_chain)]
                )
                port: int = server.add_secure_port(self.address, credentials)
            else:
                port = server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise ConfigError(f"cannot listen on {self.address}: {error}") from None
        if port == 0:
            raise ConfigError(f"cannot listen on {self.address}", hint="is another server using the port?")
        await server.start()
        return server, port

    def stop(self, grace: float | None = 2.0) -> None:
        server, broker, loop, thread = self._server, self.broker, self._loop, self._thread
        self._server = None
        if server is not None and loop is not None and thread is not None:
            asyncio.run_coroutine_threadsafe(server.stop(grace), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None
        self._shutdown_executor()
        self._stopped.set()
        if broker is not None:
            broker.close()
            self.broker = None

    def _shutdown_executor(self) -> None:
        for executor in (self._executor, self._evidence_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        self._executor = self._evidence_executor = None

    def wait(self) -> None:
        """Block until the server stops (``teelab kbs serve``)."""
        self._stopped.wait()

    def __enter__(self) -> KbsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
