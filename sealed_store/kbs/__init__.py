"""teelab.sealed_store.kbs — the key broker (protocol ``teelab/kbs/v1``, docs/protocols/kbs.md).

Releases a sealed dataset's data key only to an attested kernel (evidence that satisfies the dataset's
release policy) for a granted user (a session grant the gateway obtained after attesting the session),
and records every decision in a signed, hash-chained audit log.

Modules, one job each:

- ``server`` — ``KbsServer``: start/stop a gRPC server; ``config`` — ``KbsConfig``
- ``client`` — ``KbsClient``: typed calls, ``KeyBrokerError(reason, message)`` on any failure; kernels use
  ``fetch_key``. Imports neither the database layer nor the verifier.
- ``service`` — the gRPC face (decode, authorize, map errors); ``broker`` — the operations in Python
- ``release`` — challenge and the ordered release checks; ``nonces`` — self-authenticating nonces
- ``grants`` — session grants (JWT EdDSA); ``auth`` — bearer tokens; ``crypto`` — the KBS's keys on disk
- ``appraisal``/``collateral`` — judging evidence with the gateway's verifier and a collateral source
- ``store`` — SQLite/PostgreSQL state; ``audit`` — the log's format and ``verify_audit``
- ``protocol`` — the bytes both ends compute; ``reasons`` — the reason codes; ``model`` — returned values
- ``cli`` — ``teelab kbs serve``, ``teelab audit show|verify``; ``v1`` — generated gRPC modules
"""
