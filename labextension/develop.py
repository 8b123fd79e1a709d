"""Link the built JupyterLab extension and the server-extension config into this Python environment.

An editable install (``pip install -e``, what ``make`` does) does not ship the built extension: it would be a
copy, stale after the next build. Instead, as ``jupyter labextension develop`` does, the environment's
``share/jupyter/labextensions/@teelab/jupyterlab`` becomes a link to ``extension/labextension``, so a rebuild
is live on the next page load. The server-extension config is linked too when the install did not copy it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "extension" / "labextension"
SERVER_CONFIG = ROOT / "jupyter-config" / "server-config" / "teelab.json"
NAME = "@teelab/jupyterlab"


def link(target: Path, link_path: Path) -> None:
    if link_path.is_symlink() and link_path.resolve() == target.resolve():
        return
    if link_path.is_symlink() or link_path.is_file():
        link_path.unlink()
    elif link_path.is_dir():
        shutil.rmtree(link_path)  # a copied install of an older build
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target, target_is_directory=target.is_dir())
    print(f"linked {link_path} -> {target}")


def main(prefix: Path) -> int:
    if not (BUILT / "package.json").is_file():
        print(f"no built extension at {BUILT}: run `python labextension/build.py` first", file=sys.stderr)
        return 1
    link(BUILT, prefix / "share" / "jupyter" / "labextensions" / NAME)
    config = prefix / "etc" / "jupyter" / "jupyter_server_config.d" / SERVER_CONFIG.name
    if not (config.is_file() and config.read_bytes() == SERVER_CONFIG.read_bytes()):
        link(SERVER_CONFIG, config)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.prefix)))
