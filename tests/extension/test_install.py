"""Installed as Jupyter expects: the server extension enabled by config, the prebuilt JupyterLab extension in
the environment's labextensions folder, and room for the dataset routes."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from tornado.web import RequestHandler

import teelab.extension
from teelab.extension import handlers
from teelab.extension.app import TeelabExtensionApp

REPO = Path(__file__).resolve().parents[2]
NPM_NAME = "@teelab/jupyterlab"


def test_the_config_file_enables_the_server_extension() -> None:
    config = json.loads((REPO / "jupyter-config" / "server-config" / "teelab.json").read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"teelab.extension": True}}}
    installed = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "teelab.json"
    assert json.loads(installed.read_text()) == config


def test_extension_points() -> None:
    (point,) = teelab.extension._jupyter_server_extension_points()
    assert point == {"module": "teelab.extension", "app": TeelabExtensionApp}
    assert TeelabExtensionApp.name == "teelab"
    (lab,) = teelab.extension._jupyter_labextension_paths()
    assert lab["dest"] == NPM_NAME
    built = Path(teelab.extension.__file__).parent / lab["src"]
    assert json.loads((built / "package.json").read_text())["name"] == NPM_NAME


def test_the_prebuilt_labextension_is_installed_in_this_environment() -> None:
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / NPM_NAME
    manifest = json.loads((installed / "package.json").read_text())
    assert manifest["name"] == NPM_NAME
    entry = manifest["jupyterlab"]["_build"]["load"]
    assert (installed / entry).is_file()


class _Stub(RequestHandler):
    pass


def test_dataset_routes_join_the_api_when_their_module_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType(handlers.DATASETS_MODULE)
    module.ROUTES = [(r"/datasets", _Stub), (r"/datasets/(?P<name>[^/]+)/grants", _Stub, {"x": 1})]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, handlers.DATASETS_MODULE, module)
    paths = {route[0]: route for route in handlers.routes()}
    assert paths["/teelab/api/datasets"] == ("/teelab/api/datasets", _Stub)
    assert paths["/teelab/api/datasets/(?P<name>[^/]+)/grants"][2] == {"x": 1}
    assert "/teelab/api/kernels" in paths


def test_without_the_dataset_module_the_rest_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, handlers.DATASETS_MODULE, None)  # makes the import fail
    assert handlers.dataset_routes() == []
