"""``teelab hub pod`` and ``teelab hub pod-measure``: the hub pod (docs/hosted-hub.md, "The hub pod").

::

  teelab hub pod-measure --config /srv/teelab/jupyterhub_config.py --policy-out hub-pod.toml
  teelab hub pod --config /srv/teelab/jupyterhub_config.py --listen 0.0.0.0:443 --hostname hub.example.org

The config is the operator's ``jupyterhub_config.py`` calling ``configure_hub_pod``; it, node and
configurable-http-proxy's files are measured into the image, so the policy ``pod-measure`` writes pins them.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from teelab.cli_support import Subparsers, add_command
from teelab.errors import UsageError


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _config(path: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"--config {path} is not a file")
    return path


def _measure(args: argparse.Namespace) -> int:
    from teelab.extension.hub.front_door_launch import print_measured
    from teelab.extension.hub.hub_pod_image import build_hub_pod_image
    from teelab.kernel.attested_module import get_backend

    backend = get_backend(args.backend)
    image = build_hub_pod_image(backend, _config(args.config))
    print_measured(image, simulated=backend.simulated, policy_out=args.policy_out)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from teelab.extension.hub.hub_pod_image import build_hub_pod_image, launch_hub_pod
    from teelab.kernel.attested_module import get_backend

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)  # runs the finally below: the pod stops with the command

    signal.signal(signal.SIGTERM, stop)
    backend = get_backend(args.backend)
    listen = _address(args.listen)
    image = build_hub_pod_image(backend, _config(args.config))
    running = launch_hub_pod(
        backend, image, listen=listen, hostnames=tuple(args.hostname) or ("localhost", "127.0.0.1")
    )
    print(f"hub pod      https://{listen[0]}:{running.port}/ (hub, proxy and service inside)", flush=True)
    print(f"measurement  {image.mrenclave.hex()}", flush=True)
    print(f"TLS key      SPKI-SHA256 {running.tls_spki_sha256.hex()} (made in the TEE)", flush=True)
    try:
        return running.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        running.stop()


def register_pod_commands(commands: Subparsers) -> None:
    measure = add_command(
        commands,
        "pod-measure",
        _measure,
        help_text="build the hub pod's image (front door, hub, proxy, service) and print the measurement to pin",
    )
    measure.add_argument(
        "--config", type=Path, required=True, help="the pod's jupyterhub_config.py (measured)"
    )
    measure.add_argument("--backend", default="sim", help="TEE backend (default %(default)s)")
    measure.add_argument("--policy-out", type=Path, help="write the policy that pins it here")
    serve = add_command(
        commands,
        "pod",
        _serve,
        help_text="run the hub pod in a TEE: the front door, JupyterHub, the proxy and teelab-kbs, one image",
    )
    serve.add_argument("--config", type=Path, required=True, help="the pod's jupyterhub_config.py (measured)")
    serve.add_argument("--listen", default="0.0.0.0:443", help="default %(default)s")
    serve.add_argument("--hostname", action="append", default=[], help="a name for the certificate (repeat)")
    serve.add_argument("--backend", default="sim", help="TEE backend (default %(default)s)")
