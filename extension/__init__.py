"""teelab.extension: teelab inside Jupyter.

- the jupyter_server extension ``teelab`` (:mod:`teelab.extension.app`): REST under ``/teelab/api/`` for the
  attestation of each kernel, the policy in force, health and datasets;
- the prebuilt JupyterLab extension ``@teelab/jupyterlab`` (source in ``labextension/`` at the top of the
  repository, built into ``labextension/`` beside this file): the attestation badge in the status bar, its
  panel, and the dataset browser.

Both are enabled on install: the wheel ships ``etc/jupyter/jupyter_server_config.d/teelab.json`` and
``share/jupyter/labextensions/@teelab/jupyterlab``.
"""

from __future__ import annotations

from typing import Any

LABEXTENSION_NAME = "@teelab/jupyterlab"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    # Imported here so that importing teelab.extension (e.g. for the hub parts) does not load jupyter_server.
    from teelab.extension.app import TeelabExtensionApp

    return [{"module": "teelab.extension", "app": TeelabExtensionApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": LABEXTENSION_NAME}]
