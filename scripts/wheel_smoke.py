"""`make wheel-check`: build teelab as it is released and use it as a user would, with no checkout in sight.

1. export a commit (default HEAD) with `git archive`: only committed files, nothing the working tree holds;
2. build the sdist from it (`python -m build --sdist`, build isolation on);
3. create a fresh virtual environment (no system site-packages) and build the wheel from the sdist with
   *its* Python (`pip wheel <sdist>`, build isolation on): the labextension is built from the sdist's sources
   by the tools pyproject.toml declares, not by anything in the checkout's .venv;
4. install the wheel into the fresh environment;
5. with HOME, XDG_* and the TEELAB_/JUPYTER_ variables pointing into a temporary home (state belongs to its
   environment: the simulated platform, images, kernelspecs and key broker land there, not in yours), from a
   folder outside the checkout: `teelab --version`, `teelab doctor`, `teelab kernel install`,
   `jupyter labextension list` and `jupyter server extension list`, the key broker, `teelab dataset upload`,
   and (scripts/wheel_smoke_kernel.py) the attested sim kernel through jupyter_client: a pandas cell, its
   attestation, the sealed dataset; every entry point loads and every console script runs; every code folder
   and every packaged resource of the source tree is installed.

Pip installs offline from a wheelhouse (default .build/wheelhouse, or $TEELAB_WHEELHOUSE): missing wheels are
downloaded once (`pip download`), after that no index is consulted, so a run costs the build and the install.
Standard library only; `build` comes with the dev extras. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DRIVER = Path(__file__).with_name("wheel_smoke_kernel.py")
DEFAULT_WHEELHOUSE = ROOT / ".build" / "wheelhouse"
PARTS = ("enclave_runtime", "gateway", "kernel", "sealed_store", "extension")
NAMESPACE = "teelab"
NOT_SHIPPED = (".py", ".pyc", ".md")  # modules are counted apart; READMEs are for readers of the repository
SKIPPED_DIRS = {"__pycache__", "node_modules"}
KERNEL = "teelab-sim"
DATASET = "smoke-sales"
ROWS = [("EU", 1.5), ("US", 2.25), ("EU", 4.0), ("APAC", 10.0)]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BUILD_TIMEOUT = 900
COMMAND_TIMEOUT = 300


class SmokeError(Exception):
    """A step failed; the message says which and shows its output."""


@dataclass
class Report:
    commit: str = ""
    wheelhouse: str = ""
    downloaded: list[str] = field(default_factory=list)  # which wheelhouse fills needed the network
    seconds: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"wheel-check: {name} …", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)


def run(
    command: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            [str(part) for part in command],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise SmokeError(f"`{' '.join(map(str, command))}` did not finish within {timeout:.0f}s") from error
    if check and result.returncode != 0:
        raise SmokeError(
            f"`{' '.join(map(str, command))}` exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def clean_path() -> list[str]:
    """PATH without the checkout and without the environment running this script (its teelab, its jlpm)."""
    running_env = Path(sys.prefix).resolve()
    kept = []
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        resolved = Path(entry).resolve() if entry else None
        if resolved is None or resolved.is_relative_to(ROOT) or resolved.is_relative_to(running_env):
            continue
        kept.append(entry)
    return kept


def offline_pip_env(wheelhouse: Path) -> dict[str, str]:
    """pip (and the build isolation it sets up) installs only from the wheelhouse."""
    # The caller's other PIP_ settings (a CA bundle, say) stay: the download fallback needs them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse),
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PATH=os.pathsep.join(clean_path()),
    )
    return env


def isolated_env(home: Path, venv: Path) -> dict[str, str]:
    """A user's session in a temporary home: nothing of the caller's teelab/Jupyter/Python settings leaks in."""
    dropped = ("TEELAB_", "JUPYTER", "PYTHON", "VIRTUAL_ENV", "IPYTHON", "PIP_", "CONDA", "XDG_", "PYTEST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    runtime = home / ".run"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_RUNTIME_DIR=str(runtime),
        PATH=os.pathsep.join([str(venv / "bin"), *clean_path()]),
    )
    return env


def export_source(rev: str, dest: Path) -> str:
    """The committed tree of ``rev`` into ``dest``; returns the commit id."""
    commit = run(["git", "-C", ROOT, "rev-parse", "--verify", f"{rev}^{{commit}}"]).stdout.strip()
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=subprocess.PIPE
    )
    assert archive.stdout is not None
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    if archive.wait() != 0:
        raise SmokeError(f"git archive {commit} failed")
    return commit


def fill_wheelhouse(wheelhouse: Path, requirements: Sequence[str | Path], report: Report, label: str) -> None:
    """Make every requirement (and its dependencies) installable from the wheelhouse alone."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    env = offline_pip_env(wheelhouse)
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", wheelhouse, *requirements]
    if run(download, env=env, check=False, timeout=BUILD_TIMEOUT).returncode != 0:
        online = {k: v for k, v in env.items() if k not in ("PIP_NO_INDEX", "PIP_NO_CACHE_DIR")}
        online["PIP_FIND_LINKS"] = " ".join(filter(None, [str(wheelhouse), os.environ.get("PIP_FIND_LINKS")]))
        run(download, env=online, timeout=BUILD_TIMEOUT)
        report.downloaded.append(label)
    for stray in wheelhouse.glob(f"{NAMESPACE}-*"):  # pip download copies a local wheel in; we install ours
        stray.unlink()


def build_requirements(source: Path) -> list[str]:
    with (source / "pyproject.toml").open("rb") as file:
        return list(tomllib.load(file)["build-system"]["requires"])


def base_python() -> str:
    """The interpreter this environment was made from (a venv made by a venv's Python is based on it anyway)."""
    return str(getattr(sys, "_base_executable", sys.executable))


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise SmokeError(f"expected one site-packages folder in {venv}, found {found}")
    return found[0]


def installed_path(relative: Path) -> Path:
    """Where a file of the source tree lands in site-packages (the parts are mapped into teelab.*)."""
    return relative if relative.parts[0] == NAMESPACE else Path(NAMESPACE, *relative.parts)


def expected_files(source: Path) -> tuple[list[Path], list[Path]]:
    """(every module, every other committed file) of the parts, as paths in site-packages."""
    code: list[Path] = []
    resources: list[Path] = []
    for top in (NAMESPACE, *PARTS):
        for path in sorted((source / top).rglob("*")):
            relative = path.relative_to(source)
            if not path.is_file() or any(p in SKIPPED_DIRS or p.startswith(".") for p in relative.parts):
                continue
            if path.suffix == ".py":
                code.append(installed_path(relative))
            elif not path.name.endswith(NOT_SHIPPED):
                resources.append(installed_path(relative))
    return sorted(code), resources


def check_installed_files(source: Path, venv: Path, report: Report) -> None:
    site = site_packages(venv)
    code, resources = expected_files(source)
    jupyter_files = [
        venv / "etc" / "jupyter" / "jupyter_server_config.d" / "teelab.json",
        venv / "share" / "jupyter" / "labextensions" / "@teelab" / "jupyterlab" / "package.json",
        site / NAMESPACE / "extension" / "labextension" / "package.json",
    ]
    missing = [
        str(p)
        for p in [*(site / c for c in code), *(site / r for r in resources), *jupyter_files]
        if not p.is_file()
    ]
    if missing:
        raise SmokeError("installed without:\n  " + "\n  ".join(missing))
    report.checks["installed_modules"] = len(code)
    report.checks["installed_resources"] = [str(r) for r in resources]


def wait_for_broker(broker: subprocess.Popen[str], log: Path, timeout: float = 120) -> str:
    """The address from the broker's "listening on" line (what a user reads), once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on (\S+)", log.read_text())
        if match:
            return match.group(1)
        if broker.poll() is not None:
            raise SmokeError(f"the key broker exited with {broker.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    raise SmokeError(f"the key broker did not start within {timeout:.0f}s:\n{log.read_text()}")


def listed_enabled(output: str, name: str) -> bool:
    """Jupyter lists ``name`` as enabled and its validation as OK (an extension that fails to load is not)."""
    lines = [line.split() for line in ANSI.sub("", output).splitlines()]
    return any(name in words and "enabled" in words for words in lines) and any(
        name in words and "OK" in words for words in lines
    )


def use_as_a_user(venv: Path, work: Path, wheel_version: str, report: Report) -> None:
    home = work / "home"
    home.mkdir()
    env = isolated_env(home, venv)
    bin_dir = venv / "bin"

    def teelab(*args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        return run([bin_dir / "teelab", *args], env=env, cwd=home, timeout=timeout).stdout

    with report.step("teelab --version, doctor"):
        version = teelab("--version").strip()
        if wheel_version not in version:
            raise SmokeError(f"`teelab --version` says {version!r}, the wheel is {wheel_version}")
        report.checks["version"] = version
        teelab("doctor")
        backends = {entry["name"]: entry["available"] for entry in json.loads(teelab("doctor", "--json"))}
        if not backends.get("sim"):
            raise SmokeError(f"`teelab doctor` does not offer the simulated TEE: {backends}")
        report.checks["doctor"] = backends

    with report.step("teelab kernel install"):
        # Inside a virtual environment the default is the environment's own kernelspec and policy.
        said = teelab("kernel", "install", timeout=BUILD_TIMEOUT)
        if "this environment (sys.prefix)" not in said:
            raise SmokeError(f"`teelab kernel install` in a venv did not install into it:\n{said}")
        specs = json.loads(
            run([bin_dir / "jupyter", "kernelspec", "list", "--json"], env=env, cwd=home).stdout
        )
        spec_dir = Path(specs["kernelspecs"][KERNEL]["resource_dir"])
        if not spec_dir.resolve().is_relative_to(venv.resolve()):
            raise SmokeError(f"the kernelspec went to {spec_dir}, outside the environment {venv}")
        policy = venv / "etc" / "teelab" / "policies" / f"{KERNEL}.toml"
        if not policy.is_file():
            raise SmokeError(f"`teelab kernel install` wrote no policy at {policy} (its --help says it does)")
        measured = teelab("enclave", "measure", "--json")
        mrenclave = next(json.loads(line) for line in measured.splitlines() if line.startswith("{"))[
            "mrenclave"
        ]
        report.checks["kernelspec"] = str(spec_dir)
        report.checks["mrenclave"] = mrenclave

    with report.step("jupyter labextension / server extension list"):
        for command, name in (("labextension", "@teelab/jupyterlab"), ("server", "teelab.extension")):
            args = ["labextension", "list"] if command == "labextension" else ["server", "extension", "list"]
            listed = run([bin_dir / "jupyter", *args], env=env, cwd=home)
            if not listed_enabled(listed.stdout + listed.stderr, name):
                raise SmokeError(f"`jupyter {' '.join(args)}` does not show {name} enabled:\n{listed.stderr}")
            report.checks[f"{command}_enabled"] = True

    log = work / "kbs.log"
    with log.open("w") as log_file:  # the broker keeps its own copy of the descriptor
        broker = subprocess.Popen(
            [str(bin_dir / "teelab"), "kbs", "serve", "--listen", "127.0.0.1:0"],
            env=env,
            cwd=home,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        with report.step("key broker, dataset upload"):
            report.checks["kbs"] = wait_for_broker(broker, log)
            csv = home / f"{DATASET}.csv"
            csv.write_text("region,amount\n" + "".join(f"{region},{amount}\n" for region, amount in ROWS))
            user = getpass.getuser()
            teelab(
                "dataset",
                "upload",
                str(csv),
                "--name",
                DATASET,
                "--policy",
                str(policy),
                "--grant",
                f"user:{user}",
            )
            if DATASET not in teelab("dataset", "list"):
                raise SmokeError(f"`teelab dataset list` does not list {DATASET}")

        with report.step("attested kernel through jupyter_client"):
            driver = work / KERNEL_DRIVER.name  # a copy: nothing is run from inside the checkout
            shutil.copy(KERNEL_DRIVER, driver)
            out = work / "kernel-result.json"
            result = run(
                [bin_dir / "python", driver, "--dataset", DATASET, "--out", out],
                env=env,
                cwd=home,
                check=False,
            )
            seen = json.loads(out.read_text()) if out.is_file() else {}
            if result.returncode != 0:
                raise SmokeError(
                    f"the kernel session failed:\n{seen.get('kernel_error', result.stderr[-6000:])}"
                )
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()

    judge_kernel_session(seen, mrenclave, venv, report)

    with report.step("console scripts"):
        scripts = [p["name"] for p in seen["entry_points"] if p["group"] == "console_scripts"]
        broken = [f"{p['group']}:{p['name']}\n{p['error']}" for p in seen["entry_points"] if p["error"]]
        if broken or not scripts:
            raise SmokeError(f"entry points that do not load: {broken}; console scripts: {scripts}")
        for name in scripts:
            if not (bin_dir / name).is_file():
                raise SmokeError(f"the console script {name} is not installed in {bin_dir}")
            run([bin_dir / name, "--help"], env=env, cwd=home)
        report.checks["entry_points"] = sorted(f"{p['group']}:{p['name']}" for p in seen["entry_points"])

    report.checks["state"] = sorted(
        str(p.relative_to(home)) for p in home.glob(".local/share/*/*") if p.is_dir()
    )


def judge_kernel_session(seen: Mapping[str, Any], mrenclave: str, venv: Path, report: Report) -> None:
    kernel = seen["kernel"]
    site = site_packages(venv).resolve()
    for side, where in (("client", seen["client"]), ("kernel", kernel["where"])):
        imported = Path(where["teelab"]).resolve()
        if not imported.is_relative_to(site):
            raise SmokeError(
                f"the {side} imported teelab from {imported}, not from the installed wheel in {site}"
            )
        leaked = [p for p in where["path"] if p and Path(p).resolve().is_relative_to(ROOT)]
        if leaked:
            raise SmokeError(f"the checkout is on the {side}'s sys.path: {leaked}")
    if kernel["pandas_sum"] != "10":
        raise SmokeError(f"the pandas cell printed {kernel['pandas_sum']!r}, not 10")
    attestation = kernel["attestation"]
    if not attestation["simulated"] or attestation["measurement"] != mrenclave:
        raise SmokeError(
            f"the kernel's attestation {attestation} is not the sim image measured as {mrenclave}"
        )
    expected: dict[str, float] = {}
    for region, amount in ROWS:
        expected[region] = round(expected.get(region, 0.0) + amount, 2)
    if kernel["dataset"] != expected:
        raise SmokeError(f"read_dataset({DATASET!r}) summed to {kernel['dataset']}, the upload to {expected}")
    report.checks["kernel"] = {
        "pandas_sum": kernel["pandas_sum"],
        "attestation": attestation,
        "dataset": kernel["dataset"],
    }


def smoke(work: Path, *, rev: str = "HEAD", wheelhouse: Path = DEFAULT_WHEELHOUSE) -> Report:
    """Every step above, in ``work``; raises SmokeError at the first failure."""
    report = Report(wheelhouse=str(wheelhouse))
    source, dist, venv = work / "source", work / "dist", work / "venv"
    started = time.monotonic()
    with report.step("export"):
        source.mkdir()
        report.commit = export_source(rev, source)
    with report.step("build sdist"):
        fill_wheelhouse(wheelhouse, [*build_requirements(source), "build"], report, "build requirements")
        run(
            [sys.executable, "-m", "build", "--sdist", "--outdir", dist, source],
            env=offline_pip_env(wheelhouse),
            timeout=BUILD_TIMEOUT,
        )
        sdist = next(dist.glob("*.tar.gz"))
    with report.step("fresh venv, wheel from the sdist"):
        run([base_python(), "-m", "venv", "--without-pip", venv])
        python = venv / "bin" / "python"
        # pip runs under the fresh interpreter (--python); the build backend and labextension build run there.
        pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python]
        run(
            [*pip, "wheel", "--no-deps", "--wheel-dir", dist, sdist],
            env=offline_pip_env(wheelhouse),
            cwd=work,
            timeout=BUILD_TIMEOUT,
        )
        wheel = next(dist.glob("*.whl"))
        report.checks["sdist"], report.checks["wheel"] = sdist.name, wheel.name
    with report.step("install the wheel"):
        fill_wheelhouse(wheelhouse, [wheel], report, "runtime dependencies")
        run(
            [*pip, "install", "--no-compile", wheel],
            env=offline_pip_env(wheelhouse),
            cwd=work,
            timeout=BUILD_TIMEOUT,
        )
    with report.step("installed files"):
        check_installed_files(source, venv, report)
    use_as_a_user(venv, work, wheel.name.split("-")[1], report)
    report.seconds["total"] = round(time.monotonic() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rev", default="HEAD", help="the commit to build (default HEAD)")
    parser.add_argument(
        "--wheelhouse", type=Path, default=Path(os.environ.get("TEELAB_WHEELHOUSE", DEFAULT_WHEELHOUSE))
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed) for a look")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teelab-wheel-check-"))
    report: Report | None = None
    try:
        report = smoke(work, rev=args.rev, wheelhouse=args.wheelhouse.resolve())
    except SmokeError as error:
        print(f"wheel-check FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"wheel-check: work folder kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report.checks, indent=1))
    for name, seconds in report.seconds.items():
        print(f"  {name:<48} {seconds:7.1f} s")
    if args.json:
        args.json.write_text(json.dumps(report.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
