"""The ``teelab-kbs`` hub service as the hub pod runs it: its API token from the pod's pipe, not its environment.

JupyterHub hands a managed service its token in ``JUPYTERHUB_API_TOKEN``, which the host can read from
``/proc/<pid>/environ``. The pod starts the service itself (:mod:`.hub_pod`) with the public variables only and
the settings pipe; the token goes into this process's own ``os.environ`` (which does not change what
``/proc/<pid>/environ`` shows) where the service and its hub OAuth client look for it.
"""

from __future__ import annotations

import os


def main() -> None:
    from teelab.extension.hub import service
    from teelab.extension.hub.hub_pod_config import current_settings

    os.environ["JUPYTERHUB_API_TOKEN"] = current_settings().service_token
    service.main()


if __name__ == "__main__":
    main()
