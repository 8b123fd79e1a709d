"""The Gramine manifest teelab renders, checked key by key. OS boundary only: no Gramine, no SGX hardware.

Gramine's own tooling (graminelibos / gramine-manifest) is not installable here — it is on neither PyPI, Debian
nor npm — so the second rendering pass is done the way gramine-manifest does it (Jinja2, then TOML) with fixed
stand-in Gramine locations, and the keys are checked against the manifest schema of Gramine ≥ 1.8.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from teelab.enclave_runtime.gramine.template import (
    GramineOptions,
    mount_roots,
    preview_manifest,
    render_template,
    toml_string,
)
from teelab.enclave_runtime.hashcache import HashCache
from teelab.enclave_runtime.images import kernel_image_spec
from teelab.enclave_runtime.manifest import (
    TEE_STATE,
    TEE_TMP,
    EnclaveManifest,
    ImageSpec,
    TrustedFile,
    expand,
)
from teelab.errors import EnclaveError

RUNTIMEDIR = "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"
LIBOS = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
# The top-level keys and sub-keys of Gramine's manifest schema (graminelibos/manifest_check.py, v1.8/v1.9)
# that this manifest may use; anything else would be refused by `gramine-manifest --check`.
SCHEMA: dict[str, set[str]] = {
    "libos": {"entrypoint", "check_invalid_pointers"},
    "loader": {"entrypoint", "argv", "env", "log_level", "uid", "gid", "log_file", "insecure__disable_aslr"},
    "fs": {"mounts", "root", "start_dir"},
    "sys": {"enable_sigterm_injection", "stack", "brk", "enable_extra_runtime_domain_names_conf", "fds"},
    "sgx": {
        "debug",
        "edmm_enable",
        "enclave_size",
        "max_threads",
        "remote_attestation",
        "isvprodid",
        "isvsvn",
        "file_check_policy",
        "trusted_files",
    },
}


def small_manifest(tmp_path: Path, **changes: Any) -> tuple[EnclaveManifest, GramineOptions]:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "lib" / "pkg" / "__pycache__").mkdir(parents=True)
    (env / "bin" / "python").write_bytes(b"\x7fELF interpreter")
    (env / "lib" / "pkg" / "__init__.py").write_text("x = 1\n")
    (env / "lib" / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"host-written")
    spec = ImageSpec(
        name="python-kernel",
        entrypoint=str(env / "bin" / "python"),
        argv=(str(env / "bin" / "python"), "-s", "-m", "teelab.kernel.boot"),
        env={"HOME": f"{TEE_TMP}/home", "PYTHONPYCACHEPREFIX": f"{TEE_STATE}/pycache", "LANG": "C.UTF-8"},
        passthrough_env=("TEELAB_BOOT_REQUEST",),
        trusted=(str(env / "bin" / "python"), str(env / "lib")),
        isv_prod_id=7,
        isv_svn=3,
    )
    with HashCache() as cache:
        manifest = expand(spec, cache)
    options = GramineOptions(**changes)
    return manifest, options


def rendered(manifest: EnclaveManifest, options: GramineOptions) -> dict[str, Any]:
    template = render_template(manifest, options)
    return tomllib.loads(preview_manifest(template, runtimedir=RUNTIMEDIR, libos=LIBOS))


def test_os_boundary_rendered_manifest_key_by_key_at_the_os_boundary(tmp_path: Path) -> None:
    manifest, options = small_manifest(tmp_path)
    doc = rendered(manifest, options)
    python = str(tmp_path / "env" / "bin" / "python")
    assert doc["libos"] == {"entrypoint": python}
    assert doc["loader"]["entrypoint"] == {"uri": f"file:{LIBOS}"}
    assert doc["loader"]["log_level"] == "error"
    assert doc["loader"]["argv"] == [python, "-s", "-m", "teelab.kernel.boot"]
    assert "insecure__use_cmdline_argv" not in doc["loader"] and "insecure__use_host_env" not in doc["loader"]
    env = doc["loader"]["env"]
    assert env["HOME"] == "/teelab/tmp/home" and env["PYTHONPYCACHEPREFIX"] == "/teelab/state/pycache"
    assert env["TEELAB_BOOT_REQUEST"] == {"passthrough": True}
    assert [k for k, v in env.items() if isinstance(v, dict)] == ["TEELAB_BOOT_REQUEST"]
    assert env["LD_LIBRARY_PATH"] == "/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
    assert doc["sys"]["enable_sigterm_injection"] is True
    assert doc["fs"]["start_dir"] == "/teelab/tmp"
    mounts = doc["fs"]["mounts"]
    assert mounts[0] == {"path": "/lib", "uri": f"file:{RUNTIMEDIR}"}
    assert {"type": "tmpfs", "path": "/teelab/tmp"} in mounts
    assert {
        "type": "encrypted",
        "path": "/teelab/state",
        "uri": "file:tee-state",
        "key_name": "_sgx_mrenclave",
    } in mounts
    chroot = {m["path"] for m in mounts if "type" not in m}
    assert {str(tmp_path / "env" / "bin"), str(tmp_path / "env" / "lib" / "pkg")} <= chroot
    sgx = doc["sgx"]
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["debug"] is False and sgx["edmm_enable"] is False
    assert sgx["enclave_size"] == "8G" and sgx["max_threads"] >= 64
    assert (sgx["isvprodid"], sgx["isvsvn"]) == (7, 3)
    assert sgx["file_check_policy"] == "strict"
    trusted = sgx["trusted_files"]
    assert trusted[:3] == [
        f"file:{RUNTIMEDIR}/",
        "file:/lib/x86_64-linux-gnu/",
        "file:/usr/lib/x86_64-linux-gnu/",
    ]
    measured = {t["uri"]: t["sha256"] for t in trusted[3:]}
    assert measured == {f"file:{f.path}": f.sha256 for f in manifest.trusted_files}
    assert not any("__pycache__" in uri for uri in measured), "bytecode the host writes is never trusted"
    for section, keys in doc.items():
        assert section in SCHEMA and set(keys) <= SCHEMA[section], (
            section,
            set(keys) - SCHEMA.get(section, set()),
        )


def test_os_boundary_debug_and_sizes_are_options_and_are_checked(tmp_path: Path) -> None:
    manifest, _ = small_manifest(tmp_path)
    doc = rendered(manifest, GramineOptions(debug=True, enclave_size="16G", max_threads=128))
    assert (
        doc["sgx"]["debug"] is True
        and doc["sgx"]["enclave_size"] == "16G"
        and doc["sgx"]["max_threads"] == 128
    )
    with pytest.raises(EnclaveError, match="not a power of two"):
        render_template(manifest, GramineOptions(enclave_size="6G"))
    with pytest.raises(EnclaveError, match="at least 64"):
        render_template(manifest, GramineOptions(max_threads=32))
    with pytest.raises(EnclaveError, match="not a Gramine size"):
        render_template(manifest, GramineOptions(enclave_size="8GB"))


def test_os_boundary_the_venv_symlink_interpreter_is_trusted_under_its_real_path_too(tmp_path: Path) -> None:
    manifest, _ = small_manifest(tmp_path)
    doc = rendered(manifest, GramineOptions(real_entrypoint="/opt/python/bin/python3.11"))
    assert doc["libos"]["entrypoint"] == "/opt/python/bin/python3.11"
    uris = {t["uri"]: t["sha256"] for t in doc["sgx"]["trusted_files"][3:]}
    assert uris["file:/opt/python/bin/python3.11"] == uris[f"file:{manifest.entrypoint}"]
    assert {"path": "/opt/python/bin", "uri": "file:/opt/python/bin"} in doc["fs"]["mounts"]


def test_os_boundary_values_cannot_inject_toml_or_jinja(tmp_path: Path) -> None:
    manifest, options = small_manifest(tmp_path)
    tricky = EnclaveManifest(
        **{**manifest.__dict__, "env": (*manifest.env, ("NOTE", 'a "quoted" \\ value\nsgx.debug = true'))}
    )
    doc = rendered(tricky, options)
    assert doc["loader"]["env"]["NOTE"] == 'a "quoted" \\ value\nsgx.debug = true'
    assert doc["sgx"]["debug"] is False
    assert toml_string("\x7f\x01é") == '"\\u007f\\u0001é"'
    jinja = EnclaveManifest(**{**manifest.__dict__, "env": (("X", "{{ 7*7 }}"),)})
    with pytest.raises(EnclaveError, match="Jinja markup"):
        render_template(jinja, options)
    with pytest.raises(EnclaveError, match="passthrough"):
        render_template(EnclaveManifest(**{**manifest.__dict__, "passthrough_env": ("HOME",)}), options)


def test_os_boundary_trusted_files_under_gramines_lib_mount_are_refused(tmp_path: Path) -> None:
    manifest, options = small_manifest(tmp_path)
    hidden = EnclaveManifest(
        **{
            **manifest.__dict__,
            "trusted_files": (*manifest.trusted_files, TrustedFile("/lib/python3/x.py", "00" * 32, 1)),
        }
    )
    with pytest.raises(EnclaveError, match="Gramine mounts its own C library"):
        render_template(hidden, options)


def test_os_boundary_mount_roots_are_the_fewest_folders() -> None:
    assert mount_roots(
        ["/a/b/c.py", "/a/b/d/e.py", "/a/x.py", "/z/y/w.so", "/usr/lib/x86_64-linux-gnu/libz.so"],
        covered=["/usr/lib/x86_64-linux-gnu"],
    ) == ["/a", "/z/y"]


def test_os_boundary_the_real_kernel_image_renders_to_a_valid_manifest() -> None:
    """The kernel image of this very environment (its ~20k files), rendered as `teelab enclave build` does."""
    from teelab.enclave_runtime.gramine.backend import gramine_options

    spec = kernel_image_spec()
    with HashCache() as cache:
        manifest = expand(spec, cache)
        options = gramine_options(spec, cache, debug=False)
    doc = rendered(manifest, options)
    assert doc["libos"]["entrypoint"] == os.path.realpath(spec.entrypoint)
    assert doc["loader"]["argv"][1:] == ["-s", "-m", "teelab.kernel.boot"]
    assert len(doc["sgx"]["trusted_files"]) >= len(manifest.trusted_files) + 3
    assert doc["loader"]["env"]["TEELAB_BOOT_REQUEST"] == {"passthrough": True}


def test_os_boundary_a_tmpfs_at_tmp_comes_before_the_image_folders_beneath_it(tmp_path: Path) -> None:
    """The Python environment here lives under /tmp (pytest's tmp_path): Gramine must mount the /tmp tmpfs
    first, or it hides the interpreter's folders (tee_runtimes.md §1.7)."""
    from .libos_standin import gramine_loader_errors

    assert str(tmp_path).startswith("/tmp/")
    manifest, options = small_manifest(tmp_path)
    doc = rendered(manifest, options)
    paths = [m["path"] for m in doc["fs"]["mounts"]]
    assert {"type": "tmpfs", "path": "/tmp"} in doc["fs"]["mounts"]
    assert paths.index("/tmp") < paths.index(str(tmp_path / "env" / "bin"))
    assert gramine_loader_errors(doc) == []
    # The stand-in loader tells the truth about the other order.
    backwards = {**doc, "fs": {**doc["fs"], "mounts": list(reversed(doc["fs"]["mounts"]))}}
    assert any("is hidden by the later mount" in e for e in gramine_loader_errors(backwards))


def test_os_boundary_the_entrypoint_passes_gramines_file_policy(tmp_path: Path) -> None:
    from .libos_standin import gramine_loader_errors

    manifest, _ = small_manifest(tmp_path)
    doc = rendered(manifest, GramineOptions(real_entrypoint="/opt/python/bin/python3.11"))
    assert gramine_loader_errors(doc) == []
    untrusted = {**doc, "sgx": {**doc["sgx"], "trusted_files": doc["sgx"]["trusted_files"][:3]}}
    assert gramine_loader_errors(untrusted) == [
        "Disallowing access to file 'python3.11'; file is not allowed. init_exec_handle: Permission denied"
    ]


def test_os_boundary_image_files_directly_in_tmp_are_refused() -> None:
    manifest = EnclaveManifest(
        name="k",
        entrypoint="/tmp/python",
        argv=("/tmp/python",),
        env=(),
        passthrough_env=(),
        trusted_files=(TrustedFile("/tmp/python", "00" * 32, 1),),
        isv_prod_id=0,
        isv_svn=0,
    )
    with pytest.raises(EnclaveError, match="directly in"):
        render_template(manifest, GramineOptions())


OPENED_AT_START = """
import json, os, sys
opened = set()
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        opened.add(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(hook)
import teelab.kernel.kernelapp, teelab.kernel.boot, teelab.sealed_store, ipykernel.ipkernel, pandas, zmq
print(json.dumps(sorted(p for p in opened if os.path.isfile(p))))
"""


def test_os_boundary_every_file_the_kernel_opens_at_start_passes_gramines_file_policy(tmp_path: Path) -> None:
    """The files the real kernel's imports open (an audit hook records them) checked against the rendered
    manifest as Gramine's strict file policy checks them: one refusal would stop the kernel on hardware (the
    time zone database, which pandas' dateutil opens at import, was such a file)."""
    import json
    import subprocess

    from teelab.enclave_runtime.gramine.backend import gramine_options

    from .libos_standin import GRAMINE_UNCHECKED, gramine_file_allowed

    spec = kernel_image_spec()
    with HashCache() as cache:
        manifest = expand(spec, cache)
        options = gramine_options(spec, cache, debug=False)
    doc = rendered(manifest, options)
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}  # the manifest's: the state mount
    result = subprocess.run(
        [spec.entrypoint, "-s", "-c", OPENED_AT_START], env=env, capture_output=True, text=True, check=True
    )
    opened = json.loads(result.stdout)
    assert len(opened) > 100  # the hook saw the imports
    refused = [
        path
        for path in opened
        if not path.startswith(GRAMINE_UNCHECKED)
        and not path.startswith(str(tmp_path))
        and not gramine_file_allowed(path, doc)
        and not gramine_file_allowed(os.path.realpath(path), doc)
    ]
    assert refused == []
    assert "file:/usr/share/zoneinfo/" in doc["sgx"]["trusted_files"]
