"""``teelab hub verify``, ``teelab hub connect``, ``teelab hub front-door`` and ``teelab hub k8s-values``
(docs/hosted-hub.md)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from teelab.cli_support import Subparsers, add_command
from teelab.errors import UsageError

VERIFY_EPILOG = """\
example:
  teelab hub front-door-measure --policy-out front-door.toml   # or the policy your hub's operator publishes
  teelab hub verify https://hub.example.org --policy front-door.toml \\
      --user alice --token-file ~/.config/teelab/hub-token --server-policy my-server.toml

  ✓ TLS: https://hub.example.org:443 over TLSv1.3, key SPKI-SHA256 5b1f…
  ✓ front door evidence: authentic SGX evidence (14 checks)
  ✓ front door policy: matches policy 'hub-front-door': measurement d9c0…
  ✓ front door TLS key: the evidence binds this connection's key 5b1f…
  ✓ front door nonce: the evidence binds the fresh nonce 8e3a… sent now
  ✓ front door pin: first use: pinned key 5b1f…
  ✓ server record: alice/ fetched over the verified connection; the hub says 'affirming' (not trusted…)
  ✓ server evidence / server policy / server binding / server controller / server pin …

Exit status 0 only when every line is ✓. The pins (keys and measurements) are saved to --pin-file; a later
run fails on a changed key or measurement unless --update-pins. Then `teelab hub connect` keeps your browser
on the verified key.
"""

CONNECT_EPILOG = """\
example:
  teelab hub verify https://hub.example.org --policy front-door.toml   # pins the key
  teelab hub connect https://hub.example.org --port 8765
  # then browse http://127.0.0.1:8765/hub/ — every connection goes to the pinned key, or nowhere
"""


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise UsageError(f"cannot read the token file {path}: {error.strerror or error}") from None
    if not token:
        raise UsageError(f"the token file {path} is empty")
    return token


def _verify(args: argparse.Namespace) -> int:
    from teelab.extension.hub.verify_channel import HubAddress
    from teelab.extension.hub.verify_pins import PinFile, default_pin_file
    from teelab.extension.hub.verify_run import ServerRequest, run_verify
    from teelab.gateway.policy import load_policy

    address = HubAddress.parse(args.url)
    policy = load_policy(args.policy)
    server = None
    if args.user:
        if args.token_file is None:
            raise UsageError("--user needs --token-file (a token is never taken on the command line)")
        server_policy = load_policy(args.server_policy) if args.server_policy else None
        server = ServerRequest(args.user, _read_token(args.token_file), args.server or "", server_policy)
    report = run_verify(
        address,
        policy,
        PinFile(args.pin_file or default_pin_file()),
        server=server,
        update_pins=args.update_pins,
        cafile=args.cafile,
        collateral=args.collateral,
    )
    for line in report.lines:
        print(line.render())
    failed = report.first_failure
    if failed is not None:
        print(f"teelab hub verify: NOT VERIFIED — {failed.name}: {failed.detail}", file=sys.stderr)
        return 1
    print(f"verified {address.origin}; pins saved to {args.pin_file or default_pin_file()}")
    return 0


def _connect(args: argparse.Namespace) -> int:
    from teelab.extension.hub.connect import serve
    from teelab.extension.hub.verify_channel import HubAddress
    from teelab.extension.hub.verify_pins import PinFile, default_pin_file

    address = HubAddress.parse(args.url)
    pins = PinFile(args.pin_file or default_pin_file()).load(address.origin)
    if pins.front_door is None:
        raise UsageError(
            f"no verified key pinned for {address.origin}",
            hint=f"run teelab hub verify {address.origin} --policy FILE first",
        )
    return serve(address, bytes.fromhex(pins.front_door.tls_spki_sha256), args.port)


def _front_door_measure(args: argparse.Namespace) -> int:
    from teelab.extension.hub.front_door_launch import build_front_door_image, print_measured
    from teelab.kernel.attested_module import get_backend

    backend = get_backend(args.backend)
    print_measured(build_front_door_image(backend), simulated=backend.simulated, policy_out=args.policy_out)
    return 0


def _front_door_serve(args: argparse.Namespace) -> int:
    from teelab.extension.hub.front_door_launch import build_front_door_image, launch_front_door
    from teelab.kernel.attested_module import get_backend

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)  # runs the finally below: the front door (its own session) stops with us

    signal.signal(signal.SIGTERM, stop)
    backend = get_backend(args.backend)
    upstream = _address(args.upstream, "--upstream")
    listen = _address(args.listen, "--listen")
    running = launch_front_door(
        backend,
        build_front_door_image(backend),
        upstream=upstream,
        listen=listen,
        hostnames=tuple(args.hostname) or ("localhost", "127.0.0.1"),
    )
    print(
        f"front door   https://{listen[0]}:{running.port}/ → http://{upstream[0]}:{upstream[1]}", flush=True
    )
    print(f"TLS key      SPKI-SHA256 {running.tls_spki_sha256.hex()} (made in the TEE)", flush=True)
    try:
        return running.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        running.stop()


def _k8s_values(args: argparse.Namespace) -> int:
    import hashlib
    import json

    from teelab.extension.hub.kubernetes import ConfidentialPods
    from teelab.gateway.identity import GatewayIdentity

    if (args.identity_file is None) == (args.controller is None):
        raise UsageError(
            "give the spawner's controller: --identity-file PEM or --controller HEX (one of them)"
        )
    try:
        controller = (
            GatewayIdentity.load_or_create(args.identity_file).controller
            if args.identity_file
            else bytes.fromhex(args.controller)
        )
        policy_digest = hashlib.sha256(args.server_policy.read_bytes()).hexdigest()
        agent_policy = args.agent_policy.read_text() if args.agent_policy else None
    except ValueError:
        raise UsageError("--controller must be hex (SHA-256 of the spawner's G.pub)") from None
    except OSError as error:
        raise UsageError(f"cannot read {error.filename}: {error.strerror}") from None
    spawner = args.tee_kube_spawner  # TeeKubeSpawner: the spawner makes each pod's init-data (SHA-256) itself
    digest = "sha256" if spawner else None
    pods = ConfidentialPods(args.runtime_class, controller, policy_digest, agent_policy, digest=digest)
    if args.internal_ssl and not spawner:
        raise UsageError("--internal-ssl needs --tee-kube-spawner (stock KubeSpawner ships a hub-made key)")
    values = pods.tee_kube_spawner_values(internal_ssl=args.internal_ssl) if spawner else pods.z2jh_values()
    print(json.dumps(values, indent=2))  # JSON is YAML: pass it to helm with -f
    field = "MRCONFIGID" if args.runtime_class == "kata-qemu-tdx" else "HOST_DATA"
    print(
        f"# {field} of these pods: {pods.init_data_digest().hex()} (pin it in the server policy)",
        file=sys.stderr,
    )
    return 0


def _address(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{flag} must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def register_commands(commands: Subparsers) -> None:
    """The hosted-hub commands of the ``teelab hub`` group."""
    verify = add_command(
        commands,
        "verify",
        _verify,
        help_text="check that a hosted hub's front door (and your own server) run attested, on this connection",
        description=(
            "In the style of `contrast verify`: open ONE TLS connection to URL, send a fresh nonce over it,\n"
            "and check that the front door's evidence matches your pinned policy and binds this connection's\n"
            "TLS key and the nonce; then (with --user) fetch your server's evidence over the same connection\n"
            "and verify it again against your own policy. One line per check; pins saved (docs/hosted-hub.md)."
        ),
        epilog=VERIFY_EPILOG,
    )
    verify.add_argument("url", help="the hub, https://HOST[:PORT]")
    verify.add_argument(
        "--policy", type=Path, required=True, help="your policy for the front door (docs/policy.md)"
    )
    verify.add_argument("--user", help="also verify this hub user's own server")
    verify.add_argument("--token-file", type=Path, help="a file holding your hub API token (for --user)")
    verify.add_argument("--server", default="", help="the named server (default: the default server)")
    verify.add_argument("--server-policy", type=Path, help="your policy for your server (default: --policy)")
    verify.add_argument("--pin-file", type=Path, help="default: <teelab config>/hub-pins.json")
    verify.add_argument("--update-pins", action="store_true", help="accept a changed key or measurement")
    verify.add_argument(
        "--cafile", help="also require the certificate to chain to this CA (e.g. WebPKI roots)"
    )
    verify.add_argument(
        "--collateral", type=Path, help="Intel collateral (default: what the front door offers)"
    )

    connect = add_command(
        commands,
        "connect",
        _connect,
        help_text="a loopback proxy to a verified hub: your browser reaches only the pinned, verified key",
        epilog=CONNECT_EPILOG,
    )
    connect.add_argument("url", help="the hub, https://HOST[:PORT], verified before with teelab hub verify")
    connect.add_argument("--pin-file", type=Path, help="default: <teelab config>/hub-pins.json")
    connect.add_argument("--port", type=int, default=8765, help="the loopback port (default %(default)s)")

    measure = add_command(
        commands,
        "front-door-measure",
        _front_door_measure,
        help_text="build the attested front door's image and print the measurement to pin",
    )
    measure.add_argument("--backend", default="sim", help="TEE backend (default %(default)s)")
    measure.add_argument("--policy-out", type=Path, help="write the policy that pins it here")

    serve = add_command(
        commands,
        "front-door",
        _front_door_serve,
        help_text="run the attested TLS front door in a TEE, in front of the hub's proxy on loopback",
    )
    serve.add_argument("--upstream", required=True, help="configurable-http-proxy's address, 127.0.0.1:PORT")
    serve.add_argument("--listen", default="0.0.0.0:443", help="default %(default)s")
    serve.add_argument("--hostname", action="append", default=[], help="a name for the certificate (repeat)")
    serve.add_argument("--backend", default="sim", help="TEE backend (default %(default)s)")

    k8s = add_command(
        commands,
        "k8s-values",
        _k8s_values,
        help_text="Helm values for single-user pods in confidential containers (Kata + SEV-SNP/TDX), no secrets",
        epilog="example:\n  teelab hub k8s-values --runtime-class kata-qemu-snp --identity-file "
        "/srv/teelab/hub/spawner-identity.pem \\\n      --server-policy /srv/teelab/policies/hub-server.toml "
        "> confidential-values.yaml\n  helm upgrade hub jupyterhub/jupyterhub -f values.yaml -f "
        "confidential-values.yaml",
    )
    k8s.add_argument(
        "--runtime-class", required=True, choices=["kata-qemu-snp", "kata-qemu-tdx", "kata-qemu-coco-dev"]
    )
    k8s.add_argument("--identity-file", type=Path, help="TeeSpawner's controller key G (PEM)")
    k8s.add_argument("--controller", help="or its controller hash SHA-256(G.pub), hex")
    k8s.add_argument("--server-policy", type=Path, required=True, help="the hub's policy for the servers")
    k8s.add_argument("--agent-policy", type=Path, help="the Kata agent policy (Rego) from genpolicy")
    k8s.add_argument(
        "--tee-kube-spawner",
        action="store_true",
        help="values for teelab's TeeKubeSpawner (attested pods; it makes each pod's init-data itself)",
    )
    k8s.add_argument(
        "--internal-ssl",
        action="store_true",
        help="with --tee-kube-spawner: JupyterHub.internal_ssl (TLS to each pod with its attested in-TEE key)",
    )

    from teelab.extension.hub.hub_pod_cli import register_pod_commands

    register_pod_commands(commands)  # teelab hub pod / pod-measure (the hub pod, docs/hosted-hub.md)
