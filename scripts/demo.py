"""`make demo`: teelab on its embedded defaults, step by step, ending in JupyterLab.

1. the simulated TEE platform (created on first use);
2. the kernel's enclave image: built, signed and measured;
3. a simulated quote over it, verified by the same verifier that checks Intel's quotes;
4. the attested kernel installed into this environment ("Python 3 (teelab · simulated TEE)");
5. the key broker, and a sample sealed dataset (`sample-sales`) granted to you;
6. JupyterLab, with the example notebooks and the teelab extension (attestation badge, dataset browser).

`--check` runs every step, starts JupyterLab headless, runs attested cells (including reading the sealed
dataset) through its REST/websocket API, and exits — the test suite runs the demo that way.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def teelab(*args: str) -> str:
    result = subprocess.run([BIN / "teelab", *args], capture_output=True, text=True)
    if result.returncode not in (0, 1):
        sys.exit(f"teelab {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def walk_through_the_platform() -> None:
    step("1. the simulated TEE platform")
    print(teelab("sim", "info"))
    step("2. the kernel's enclave image (built, signed, measured)")
    print(teelab("enclave", "build"))
    step("3. a simulated SGX quote over it, and its verification")
    with tempfile.TemporaryDirectory() as scratch:
        print(teelab("sim", "quote", "--report-data", secrets.token_hex(64), "--out", scratch))
        out = Path(scratch)
        print(
            teelab(
                "evidence",
                "verify",
                str(out / "quote.bin"),
                "--collateral",
                str(out / "collateral"),
                "--allow-simulation",
            )
        )


def install_kernel(user: bool) -> None:
    step("4. the attested kernel")
    print(teelab("kernel", "install", "--user" if user else "--sys-prefix"))


def start_key_broker() -> subprocess.Popen[bytes]:
    """The local key broker (or the one already running, found through its endpoint file)."""
    from teelab.sealed_store.services import ENDPOINT_FILE, kbs_state_dir

    step("5. the key broker and a sample sealed dataset")
    endpoint = kbs_state_dir() / ENDPOINT_FILE
    endpoint.unlink(missing_ok=True)  # a broker that died uncleanly leaves it behind
    broker = subprocess.Popen(
        [str(BIN / "teelab"), "kbs", "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not endpoint.exists():
        if broker.poll() is not None or time.monotonic() > deadline:
            sys.exit(
                "the key broker did not start:\n" + (broker.stdout.read().decode() if broker.stdout else "")
            )
        time.sleep(0.1)
    print(f"key broker     listening on {endpoint.read_text().strip()} (state in {kbs_state_dir()})")
    return broker


def publish_sample_dataset() -> None:
    import numpy as np
    import pandas as pd

    from teelab.kernel.policy_files import find_policy

    if (
        subprocess.run([BIN / "teelab", "dataset", "show", "sample-sales"], capture_output=True).returncode
        == 0
    ):
        print("sample-sales   already published")
        return
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "region": rng.choice(["EU", "US", "APAC"], size=50_000),
            "amount": rng.gamma(2.0, 40.0, size=50_000).round(2),
            "day": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 365, 50_000), unit="D"),
        }
    )
    policy = find_policy("teelab-sim", allow_user=True)
    assert policy is not None, "the teelab-sim kernel's policy was just installed"
    with tempfile.TemporaryDirectory() as scratch:
        csv = Path(scratch) / "sample-sales.csv"
        frame.to_csv(csv, index=False)
        # Released to kernels the teelab-sim kernelspec's policy accepts, for you (the session user).
        from teelab.sealed_store.services import session_user

        print(
            teelab(
                "dataset",
                "upload",
                str(csv),
                "--name",
                "sample-sales",
                "--policy",
                str(policy),
                "--grant",
                session_user(),
            )
        )


def start_lab(port: int, token: str, headless: bool) -> subprocess.Popen[bytes]:
    # The token goes in a private config file: a command line is readable by every local user.
    config = Path(tempfile.mkdtemp(prefix="teelab-demo-")) / "jupyter_server_config.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps({"IdentityProvider": {"token": token}}))
    atexit.register(shutil.rmtree, config.parent, True)
    command = [
        str(BIN / "jupyter"),
        "lab",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--config={config}",
        f"--ServerApp.root_dir={ROOT / 'notebooks'}",
    ]
    if headless:
        command += ["--no-browser", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL if headless else None,
        stderr=subprocess.DEVNULL if headless else None,
    )


def api(port: int, token: str, path: str, method: str = "GET", body: object | None = None) -> object:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        detail = json.loads(error.read() or b"{}").get("message", "")
        sys.exit(f"{method} /{path} failed with HTTP {error.code}: {detail}")
    return json.loads(text) if text else None


def wait_until_up(port: int, token: str, lab: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            sys.exit("JupyterLab exited while starting")
        try:
            api(port, token, "api/status")
            return
        except OSError:
            time.sleep(0.3)
    sys.exit("JupyterLab did not come up within two minutes")


def check_attested_kernel(port: int, token: str) -> None:
    """Start the teelab kernel through JupyterLab's own API and run a cell in it."""
    from jupyter_client.blocking.client import BlockingKernelClient  # noqa: F401  (proves the client stack)

    kernel = api(port, token, "api/kernels", "POST", {"name": "teelab-sim"})
    assert isinstance(kernel, dict)
    import asyncio

    from tornado.websocket import websocket_connect

    async def run_cell() -> str:
        ws = await websocket_connect(
            f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}"
        )
        msg_id = secrets.token_hex(8)
        ws.write_message(
            json.dumps(
                {
                    "channel": "shell",
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "demo",
                        "session": "demo",
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "buffers": [],
                    "content": {
                        "code": "import teelab.session as s; print(s.attestation().summary())\n"
                        "from teelab.sealed_store import read_dataset\n"
                        "df = read_dataset('sample-sales'); print(f'sample-sales: {len(df):,} rows')",
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        out = []
        while True:
            message = json.loads(await ws.read_message())
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                out.append(message["content"]["text"])
            if message["msg_type"] == "error":
                ws.close()
                sys.exit(
                    f"the attested kernel failed: {message['content']['ename']}: {message['content']['evalue']}"
                )
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                ws.close()
                return "".join(out)

    print(asyncio.run(run_cell()))
    api(port, token, f"api/kernels/{kernel['id']}", "DELETE")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="run headless, check, and exit")
    parser.add_argument(
        "--user-install", action="store_true", help="install the kernel for the user, not the venv"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="JupyterLab's port (default: 8888, or free with --check)"
    )
    args = parser.parse_args()

    walk_through_the_platform()
    install_kernel(user=args.user_install)
    broker = start_key_broker()
    port = args.port or (free_port() if args.check else 8888)
    token = secrets.token_hex(24)
    lab: subprocess.Popen[bytes] | None = None
    try:
        publish_sample_dataset()
        step("6. JupyterLab")
        lab = start_lab(port, token, headless=args.check)
        wait_until_up(port, token, lab)
        if args.check:
            check_attested_kernel(port, token)
            print("demo check passed")
            return 0
        print(f"\nJupyterLab is running: http://127.0.0.1:{port}/lab?token={token}")
        print("Open 01-attested-session.ipynb and 02-sealed-dataset.ipynb; their kernel is")
        print('"Python 3 (teelab · simulated TEE)". The lock icon on the left opens the dataset browser.')
        print("The simulated TEE runs the real protocol without isolation: it is NOT confidential.")
        print("Press Ctrl-C to stop.")
        lab.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (lab, broker):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT if process is lab else signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    sys.exit(main())
