"""The single-user server's measured image (``teelab-hub-server``) and the hub's policy for it.

The image runs ``python -s -m teelab.extension.hub.server_boot`` with everything that interpreter imports
trusted — jupyter_server, jupyterhub's single-user extension, teelab's server extension — and lets in from the
host exactly one variable, the boot request. ``python -m teelab.extension.hub.spawner_image ROOT`` (run with
``TEELAB_DATA_DIR=ROOT/data``, as ``teelab hub setup``) builds it into ``ROOT/images/hub-server`` and, for the
simulated backend, writes ``ROOT/policies/hub-server.toml`` pinning it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from teelab.errors import ConfigError, TeelabError
from teelab.extension.hub.spawner_protocol import REQUEST_ENV
from teelab.files import replace_atomically
from teelab.kernel.attested_module import EnclaveImage, ImageSpec, get_backend, python_module_spec

SERVER_IMAGE = "teelab-hub-server"
SERVER_MODULE = "teelab.extension.hub.server_boot"
POLICY_NAME = "hub-server"
# The single-user server runs teelab's server extension and provisioner (which launches kernels) in its TEE.
_PACKAGES = (
    "teelab",
    "teelab.enclave_runtime",
    "teelab.gateway",
    "teelab.kernel",
    "teelab.sealed_store",
    "teelab.extension",
)


def server_image_spec(python: str | None = None) -> ImageSpec:
    return python_module_spec(
        SERVER_MODULE, name=SERVER_IMAGE, python=python, packages=_PACKAGES, passthrough_env=(REQUEST_ENV,)
    )


def image_folder(root: Path, backend: str = "sim") -> Path:
    return root / "images" / "hub-server" / backend


def sim_server_policy(image: EnclaveImage, policy_id: str = POLICY_NAME) -> str:
    return f"""\
# The hub's policy for its single-user servers' TEEs (teelab.extension.hub.spawner_image).
# The simulated TEE has no isolation: every server it accepts is "simulated — not confidential".
id = "{policy_id}"
allow_simulation = true
allow_debug = {"true" if image.sigstruct.debug else "false"}

[sgx]
mrenclave = ["{image.mrenclave.hex()}"]
mrsigner = ["{image.mrsigner.hex()}"]
isv_prod_id = {image.sigstruct.isv_prod_id}
"""


@dataclass(frozen=True)
class ServerImage:
    image: EnclaveImage
    folder: Path
    policy_file: Path | None


def setup_server_image(root: Path, *, backend: str = "sim", policy_file: Path | None = None) -> ServerImage:
    """Build the server image under ``root`` (the hub's teelab root) and, for ``sim``, its policy (into
    ``policy_file``, default ``root/policies/hub-server.toml``)."""
    data = Path(os.environ.get("TEELAB_DATA_DIR", ""))
    if data.resolve() != (root / "data").resolve():
        raise ConfigError(f"building the server image must run with TEELAB_DATA_DIR={root / 'data'}")
    engine = get_backend(backend)
    folder = image_folder(root, backend)
    image = engine.build(server_image_spec(), out=folder)
    if not engine.simulated:
        policy_file = None
    else:
        policy_file = policy_file or root / "policies" / f"{POLICY_NAME}.toml"
        policy_file.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(policy_file, sim_server_policy(image).encode(), mode=0o644)
    return ServerImage(image, folder, policy_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teelab.extension.hub.spawner_image")
    parser.add_argument("root", type=Path)
    parser.add_argument("--backend", default="sim")
    parser.add_argument("--policy", type=Path, default=None, help="where to write the sim policy")
    args = parser.parse_args(argv)
    try:
        built = setup_server_image(args.root, backend=args.backend, policy_file=args.policy)
    except TeelabError as error:
        print(f"teelab: {error}", file=sys.stderr)
        return error.exit_code
    print(f"{SERVER_IMAGE}: MRENCLAVE {built.image.mrenclave.hex()} in {built.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
