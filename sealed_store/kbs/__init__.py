"""teelab.sealed_store.kbs — the key broker (protocol ``teelab/kbs/v1``, docs/protocols/kbs.md).

Releases a sealed dataset's data key only to an attested kernel (evidence that satisfies the dataset's
release policy) for a granted user (a session grant the user's gateway obtained, as that user, after
attesting the session), lets only a dataset's owner administer it, and records every decision in a signed,
hash-chained audit log.

Modules, one job each:

- ``server`` — ``KbsServer``: start/stop a gRPC server; ``config`` — ``KbsConfig``
- ``client`` — ``KbsClient``: typed calls, ``KeyBrokerError(reason, message)`` on any failure; kernels use
  ``fetch_key``. Imports neither the database layer nor the verifier.
- ``service`` — the gRPC face (decode, authenticate, map errors); ``broker`` — the operations in Python, and
  who may make them; ``rules`` — the owner rules, applied to the state the store reports
- ``identity`` — who is asking: local per-user tokens, OIDC JWTs, JupyterHub tokens; ``auth`` — the admin
  token and the configured providers; ``auth_config`` — the ``[auth]`` section of ``kbs.toml``
- ``junk`` — requests no one authenticated, counted and rate-limited per peer (never audited)
- ``release`` — challenge and the ordered release checks; ``nonces`` — self-authenticating nonces;
  ``controller`` — the evidence must come from a kernel the grant's gateway launched
- ``grants`` — session grants (JWT EdDSA); ``crypto`` — the KBS's keys on disk
- ``appraisal``/``collateral`` — judging evidence with the gateway's verifier and a collateral source
- ``store`` — SQLite/PostgreSQL state, assembled from ``schema`` (tables, time codec, engines),
  ``database`` (transactions, audit appends), ``release_store`` (the release path's raw-DBAPI statements)
  and ``admin_store`` (administration and audit reads); ``audit`` — the log's format and ``verify_audit``
- ``protocol`` — the bytes both ends compute; ``reasons`` — the reason codes; ``model`` — returned values
- ``cli`` — ``teelab kbs serve|user``, ``teelab audit show|verify``; ``v1`` — generated gRPC modules
"""
