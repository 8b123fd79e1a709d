"""The jupyter_server extension ``teelab``: serves teelab's REST API under ``/teelab/api/``.

Enabled by ``etc/jupyter/jupyter_server_config.d/teelab.json`` (installed with the package). Its settings are
ordinary Jupyter configuration, e.g. ``c.TeelabExtensionApp.max_upload_bytes = 1 << 30``.
"""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp
from traitlets import Int, Unicode

from teelab.extension.handlers import routes


class TeelabExtensionApp(ExtensionApp):
    name = "teelab"
    description = "teelab: attested kernels and sealed datasets in Jupyter"
    # Not a stand-alone web app: `jupyter lab` and `jupyter server` load it beside the others.
    load_other_extensions = True

    max_upload_bytes = Int(
        8 << 30,
        config=True,
        help="The largest dataset upload accepted, in bytes; larger uploads are refused with HTTP 413.",
    )

    release_policy_kernel = Unicode(
        "teelab-sim",
        allow_none=True,
        config=True,
        help="The release policy the upload dialog suggests (a name among the published policies, "
        "GET /teelab/api/datasets/policies). An upload always names its policy explicitly; nothing is "
        "released under a policy by omission.",
    )

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())
