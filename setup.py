"""Maps the repository's top-level folders (the parts of the system) into the ``teelab`` namespace.

``gateway/`` is imported as ``teelab.gateway``, ``enclave_runtime/`` as ``teelab.enclave_runtime`` and so on
(ARCHITECTURE §2). pyproject.toml cannot discover subpackages under a remapped folder, so this file does.

It also builds the prebuilt JupyterLab extension (``labextension/`` → ``extension/labextension/``, see
``labextension/build.py``) as a step of ``build``, and ships it and the server-extension config as data files:
``share/jupyter/labextensions/@teelab/jupyterlab`` and ``etc/jupyter/jupyter_server_config.d/teelab.json``.
An editable install ships only the config; ``labextension/develop.py`` links the build instead (the Makefile
runs it), so a rebuild is live without reinstalling.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import Command, find_packages, setup
from setuptools.command.build import build
from setuptools.command.egg_info import egg_info

PARTS = ("enclave_runtime", "gateway", "kernel", "sealed_store", "extension")
HERE = Path(__file__).resolve().parent
LABEXTENSION_SOURCE = "labextension"
LABEXTENSION_BUILT = "extension/labextension"
LABEXTENSION_DEST = "share/jupyter/labextensions/@teelab/jupyterlab"

package_dir = {"teelab": "teelab"}
packages = ["teelab", *(f"teelab.{p}" for p in find_packages("teelab"))]
for part in PARTS:
    package_dir[f"teelab.{part}"] = part
    packages.append(f"teelab.{part}")
    packages.extend(f"teelab.{part}.{sub}" for sub in find_packages(part))


def _builder() -> ModuleType:
    # labextension/build.py is a script, not part of the package; load it by path.
    spec = importlib.util.spec_from_file_location(
        "teelab_labextension_build", HERE / LABEXTENSION_SOURCE / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: str, dest: str) -> list[tuple[str, list[str]]]:
    """data_files entries for every file under ``root`` (relative paths; dotfiles are build bookkeeping)."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / root).rglob("*")):
        relative = path.relative_to(HERE / root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            entries.setdefault(str(Path(dest, relative.parent)), []).append(str(Path(root, relative)))
    return list(entries.items())


class build_labextension(Command):
    description = "build the prebuilt JupyterLab extension (skipped when its sources did not change)"
    user_options: list[tuple[str, str | None, str]] = []
    # setuptools sets this for editable installs; their data files are copies, so the build is linked instead.
    editable_mode = False

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        builder = _builder()
        try:
            builder.build()
        except builder.BuildError as error:
            raise SystemExit(f"error: {error}") from None
        if not self.editable_mode:
            # install_data reads this same list after the build commands ran.
            self.distribution.data_files.extend(_tree(LABEXTENSION_BUILT, LABEXTENSION_DEST))

    def get_outputs(self) -> list[str]:
        return []

    def get_output_mapping(self) -> dict[str, str]:
        return {}


class build_with_labextension(build):
    sub_commands = [("build_labextension", None), *build.sub_commands]


class egg_info_with_labextension(egg_info):
    """Put the extension's sources into the sdist, so a wheel can be built from it."""

    def find_sources(self) -> None:
        super().find_sources()
        source = HERE / LABEXTENSION_SOURCE
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_file() and relative.parts[0] not in ("node_modules", "lib", ".yarn"):
                self.filelist.append(str(Path(LABEXTENSION_SOURCE, relative)))


setup(
    package_dir=package_dir,
    packages=packages,
    package_data={
        "": ["*.toml", "*.json", "*.proto", "*.html", "*.css", "*.js", "*.mjs", "*.j2", "py.typed"]
    },
    include_package_data=True,
    data_files=[("etc/jupyter/jupyter_server_config.d", ["jupyter-config/server-config/teelab.json"])],
    cmdclass={
        "build": build_with_labextension,
        "build_labextension": build_labextension,
        "egg_info": egg_info_with_labextension,
    },
)
