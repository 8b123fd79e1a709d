"""Rendering the Gramine manifest template of an enclave image.

Decision: the manifest is written from a Jinja2 template (``kernel.manifest.j2``), the way Gramine's own
examples are, so a Gramine user can read it; every value goes through a TOML-string filter, so paths with
quotes or backslashes cannot break or inject manifest syntax. teelab's output is still a *gramine-manifest
template*: Gramine's own locations (``gramine.runtimedir()``, ``gramine.libos``) are left for
``gramine-manifest`` to fill in on the build host. Values that would look like Jinja markup to that second
pass are refused.

Where the image's placeholders go inside the enclave: ``{tee_tmp}`` is a tmpfs (enclave memory) at
``/teelab/tmp`` and ``{tee_state}`` an encrypted mount at ``/teelab/state`` keyed with ``_sgx_mrenclave``,
stored in ``tee-state/`` relative to the launch folder — a relative URI, so MRENCLAVE does not depend on
where the image folder lives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from teelab.enclave_runtime.manifest import TEE_STATE, TEE_TMP, EnclaveManifest, TrustedFile
from teelab.errors import EnclaveError

TEMPLATE = Path(__file__).with_name("kernel.manifest.j2")
TEE_TMP_PATH = "/teelab/tmp"
TEE_STATE_PATH = "/teelab/state"
STATE_URI = "file:tee-state"
STATE_FOLDER = "tee-state"
DEFAULT_ENCLAVE_SIZE = "8G"
DEFAULT_MAX_THREADS = 64
MIN_MAX_THREADS = 64
DEFAULT_STACK_SIZE = "2M"
# Where Gramine mounts its own patched C library; nothing of the image may live there.
GRAMINE_LIB = "/lib"
_SIZE = re.compile(r"([1-9][0-9]*)([KMG])")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_JINJA_MARKUP = ("{{", "}}", "{%", "%}", "{#", "#}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class GramineOptions:
    """The enclave's shape: what is not in the image spec but is in the manifest (and so in MRENCLAVE)."""

    debug: bool = False
    enclave_size: str = DEFAULT_ENCLAVE_SIZE
    max_threads: int = DEFAULT_MAX_THREADS
    stack_size: str = DEFAULT_STACK_SIZE
    # The system library folders (e.g. /lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu), mounted and
    # trusted whole as in Gramine's Python example: extension modules load libraries ldd cannot predict.
    lib_dirs: tuple[str, ...] = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
    # System data folders the kernel's libraries read (the time zone database: dateutil/pandas open
    # /usr/share/zoneinfo/UTC at import), mounted and trusted whole like the library folders.
    data_dirs: tuple[str, ...] = ()
    # Shared libraries the interpreter needs from elsewhere (a pyenv/conda libpython), measured by teelab.
    native_files: tuple[TrustedFile, ...] = ()
    # The interpreter's real path: Gramine loads an ELF file, not the symlink a venv has.
    real_entrypoint: str | None = None

    def check(self) -> None:
        size = size_bytes(self.enclave_size)
        if size & (size - 1):
            raise EnclaveError(
                f"sgx.enclave_size {self.enclave_size} is not a power of two; Gramine refuses to start it",
                hint="use 4G, 8G or 16G",
            )
        if self.max_threads < MIN_MAX_THREADS:
            raise EnclaveError(
                f"sgx.max_threads {self.max_threads} is too few for ipykernel, BLAS pools and Gramine's "
                f"helper threads; use at least {MIN_MAX_THREADS}"
            )
        size_bytes(self.stack_size)


def size_bytes(text: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise EnclaveError(f"{text!r} is not a Gramine size (a number followed by K, M or G)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def toml_string(value: object) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped."""
    text = str(value)
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def place(value: str) -> str:
    """An image value with the TEE placeholders replaced by their locations inside the enclave."""
    return value.replace(TEE_TMP, TEE_TMP_PATH).replace(TEE_STATE, TEE_STATE_PATH)


def mount_roots(paths: Iterable[str], covered: Iterable[str] = ()) -> list[str]:
    """The fewest folders that hold every path: each file's folder, minus folders inside another one."""
    held = tuple(PurePosixPath(p) for p in covered)
    folders = sorted({PurePosixPath(p).parent for p in paths})
    roots: list[PurePosixPath] = []
    for folder in folders:
        if any(folder == c or c in folder.parents for c in held):
            continue
        if roots and (folder == roots[-1] or roots[-1] in folder.parents):
            continue  # sorted order puts a folder right after the root that holds it
        roots.append(folder)
    return [str(r) for r in roots]


Mount = tuple[tuple[str, str], ...]


def ordered_mounts(mounts: Iterable[Mount]) -> list[Mount]:
    """``mounts`` with every mount after the mounts of its parent folders (stable otherwise).

    Gramine applies ``fs.mounts`` in order; one listed after a mount beneath it hides that mount.
    """
    return sorted(mounts, key=lambda mount: len(PurePosixPath(dict(mount)["path"]).parts))


def fs_mounts(lib_dirs: Iterable[str], roots: Iterable[str]) -> list[Mount]:
    """Every mount of the enclave, in an order Gramine can apply."""
    mounts: list[Mount] = [(("path", "/lib"), ("uri", "file:{{ gramine.runtimedir() }}"))]
    mounts += [(("path", path), ("uri", f"file:{path}")) for path in (*lib_dirs, *roots)]
    mounts += [
        # /tmp for libraries that ignore TMPDIR; in enclave memory, never on a host disk.
        (("type", "tmpfs"), ("path", "/tmp")),
        # The TEE's private scratch space, also in enclave memory.
        (("type", "tmpfs"), ("path", TEE_TMP_PATH)),
        # The TEE's own storage: encrypted with the MRENCLAVE sealing key, under the launch folder on the host.
        (("type", "encrypted"), ("path", TEE_STATE_PATH), ("uri", STATE_URI), ("key_name", "_sgx_mrenclave")),
    ]
    return ordered_mounts(mounts)


def _check_value(where: str, value: str) -> None:
    # gramine-manifest renders the output again with Jinja: markup in a value would be evaluated there.
    if any(token in value for token in _JINJA_MARKUP):
        raise EnclaveError(
            f"{where} {value!r} contains Jinja markup, which gramine-manifest would evaluate",
            hint="move the Python environment to a path without '{{', '{%' or '{#'",
        )


def render_template(manifest: EnclaveManifest, options: GramineOptions | None = None) -> str:
    """The Gramine manifest template for ``manifest`` (input of ``gramine-manifest``)."""
    import jinja2  # only the build host renders manifests; the enclave never imports Jinja

    options = options or GramineOptions()
    options.check()
    entrypoint = options.real_entrypoint or manifest.entrypoint
    files = list(manifest.trusted_files)
    known = {f.path for f in files}
    if entrypoint not in known:
        # The venv's interpreter is a symlink; Gramine opens the file it points to, so trust that too.
        measured = next((f for f in files if f.path == manifest.entrypoint), None)
        if measured is None:
            raise EnclaveError(f"the entrypoint {manifest.entrypoint} is not a trusted file of the image")
        files.append(TrustedFile(entrypoint, measured.sha256, measured.size))
    files.extend(f for f in options.native_files if f.path not in known)
    files.sort(key=lambda f: f.path)
    for file in files:
        _check_value("the trusted file", file.path)
        if file.path == GRAMINE_LIB or file.path.startswith(GRAMINE_LIB + "/"):
            if not any(file.path.startswith(d + "/") for d in options.lib_dirs):
                raise EnclaveError(
                    f"the trusted file {file.path} lies under {GRAMINE_LIB}, where Gramine mounts its own C "
                    "library; it would be hidden inside the enclave"
                )
        if file.path.startswith("/teelab/"):
            raise EnclaveError(f"the trusted file {file.path} collides with the enclave's /teelab mounts")
    argv = [place(a) for a in manifest.argv]
    env = [(name, place(value)) for name, value in manifest.env]
    for name, value in env:
        if not _ENV_NAME.fullmatch(name):
            raise EnclaveError(f"environment variable name {name!r} is not a valid name")
        _check_value(f"the environment variable {name}", value)
    for name in manifest.passthrough_env:
        if not _ENV_NAME.fullmatch(name) or name in dict(env):
            raise EnclaveError(f"passthrough variable {name!r} is invalid or also has a measured value")
    for arg in argv:
        _check_value("the argument", arg)
    roots = mount_roots((f.path for f in files), covered=(*options.lib_dirs, *options.data_dirs))
    if any(root in ("/tmp", "/") for root in roots):
        raise EnclaveError(
            f"the image has files directly in {sorted(r for r in roots if r in ('/tmp', '/'))}, where the "
            "enclave mounts its own tmpfs or root; move the Python environment into a folder of its own"
        )
    native_dirs = sorted({str(PurePosixPath(f.path).parent) for f in options.native_files})
    library_path = ":".join(["/lib", *options.lib_dirs, *native_dirs])
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - TOML, not HTML: every value passes the toml filter instead
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["toml"] = toml_string
    template = environment.from_string(TEMPLATE.read_text())
    return template.render(
        name=manifest.name,
        entrypoint=entrypoint,
        argv=argv,
        env=env,
        passthrough=list(manifest.passthrough_env),
        library_path=library_path,
        stack_size=options.stack_size,
        tee_tmp=TEE_TMP_PATH,
        tee_state=TEE_STATE_PATH,
        state_uri=STATE_URI,
        lib_mounts=list(options.lib_dirs),
        fs_mounts=fs_mounts((*options.lib_dirs, *options.data_dirs), roots),
        data_dirs=list(options.data_dirs),
        debug=options.debug,
        enclave_size=options.enclave_size,
        max_threads=options.max_threads,
        isv_prod_id=manifest.isv_prod_id,
        isv_svn=manifest.isv_svn,
        files=files,
    )


class _GramineGlobals:
    """What ``gramine-manifest`` offers a template as ``gramine``, for a local preview of its output."""

    def __init__(self, runtimedir: str, libos: str) -> None:
        self._runtimedir = runtimedir
        self.libos = libos

    def runtimedir(self, libc: str = "glibc") -> str:
        return self._runtimedir if libc == "glibc" else f"{self._runtimedir}/../{libc}"


def preview_manifest(template_text: str, *, runtimedir: str, libos: str) -> str:
    """Render a teelab-written template the way ``gramine-manifest`` would, with given Gramine locations.

    For checking the output without Gramine installed; the real build always runs ``gramine-manifest``.
    """
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701
    return environment.from_string(template_text).render(gramine=_GramineGlobals(runtimedir, libos))
