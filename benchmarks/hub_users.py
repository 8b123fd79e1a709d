"""Many hub users against one real JupyterHub (issue 14), teelab and its plain baseline in one run.

One JupyterHub with configurable-http-proxy, SQLite and the ``teelab-kbs`` service (the hub demo's own setup,
:class:`~teelab.extension.hub.demo.HubProcess`); an owner seals one small dataset and grants it to a group
that holds every user. Each user then, in a session of their own, as a browser would:

1. signs in through the hub's login form (the shared-password authenticator the demo configures; no token is
   minted for them);
2. spawns their server (``GET /hub/spawn``) and follows the OAuth redirects to it;
3. starts a kernel over the server's REST API: ``teelab-sim`` (attested before any code reaches it) for the
   teelab users, ipykernel's ``python3`` for the baseline users;
4. runs one cell over the kernel's websocket: ``read_dataset`` of the granted dataset (teelab), a trivial
   cell that prints the same line (baseline).

Measured: hub login → first cell result (median, p95) and each step's median; memory per user, the PSS
(/proc/<pid>/smaps_rollup) summed over the user's server and every process below it (the kernel, the enclave
runtime); failures with their reasons (goal 0). Then the user stops their server, so at most ``concurrency``
servers run at once. Teelab and baseline users alternate in one queue, so the shared machine's drift hits
both alike. After a global deadline no user starts (those in flight get a grace period; each step has its
own timeout); the hub, its servers, the proxy and the broker are stopped in ``finally``, and any process the
run measured that still runs, or that names the run's folder, is counted (goal 0) and killed.

``python benchmarks/hub_users.py [--users 50] [--concurrency 5] [--deadline-minutes 30] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common import median, percentile, write_result
from tqdm import tqdm

DATASET = "bench-sales"
ROWS = 3000  # what HubProcess.publish_sample writes
GROUP = "bench-users"
OWNER = "owner"
KINDS = {"teelab_sim": "teelab-sim", "plain": "python3"}
CELLS = {
    "teelab_sim": f"from teelab.sealed_store import read_dataset\nprint('rows', len(read_dataset({DATASET!r})))",
    "plain": f"print('rows', len(list(range({ROWS}))))",
}
STOP_SECONDS = 60.0
GRACE_SECONDS = 300.0  # after the deadline, for the users in flight (each step has its own timeout)

if TYPE_CHECKING:
    from teelab.extension.hub.client import HubUser
    from teelab.extension.hub.demo import HubProcess


@dataclass
class Outcome:
    user: str
    kind: str
    seconds: dict[str, float] = field(default_factory=dict)  # step → seconds; "total": login → first result
    pss_kb: int | None = None
    server_pss_kb: int | None = None  # the server process alone (the rest: the kernel and its runtime)
    pids: dict[int, bytes] = field(default_factory=dict)  # the user's server and kernel processes
    failure: str | None = None


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid is the 2nd field after the command name, which may itself hold spaces or ')'.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def server_pid(user: str) -> int | None:
    """The user's single-user server: the ``jupyterhub.singleuser`` process the hub started for them."""
    marker = b"\0JUPYTERHUB_USER=" + user.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and b"singleuser" in _cmdline(int(entry.name)):
            if marker in b"\0" + _environ(int(entry.name)):
                return int(entry.name)
    return None


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree(root: int) -> dict[int, bytes]:
    """``root`` and every process below it, each with its command line (to know it again later)."""
    children, todo, found = _children(), [root], {}
    while todo:
        pid = todo.pop()
        found[pid] = _cmdline(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_pss(root: int) -> tuple[int, dict[int, bytes]]:
    """PSS (kB) of ``root`` and everything below it, and those processes."""
    found = tree(root)
    return sum(pss_kb(pid) for pid in found), found


def _stop_server(user: HubUser) -> None:
    """As the hub's home page's Stop button does: DELETE with the session's cookie and XSRF token; then wait
    until the hub reports it gone, so no more than ``concurrency`` servers run at once."""
    hub = user.hub
    xsrf = user.session.cookies.get("_xsrf", path="/hub/") or ""
    user.session.delete(
        f"{hub.url}/hub/api/users/{user.name}/server",
        headers={"X-XSRFToken": xsrf, "Referer": f"{hub.url}/hub/home"},
        timeout=60,
    )
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        if not (hub.api("GET", f"users/{user.name}").get("servers") or {}):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{user.name}'s server did not stop within {STOP_SECONDS:.0f} s")


def one_user(hub: HubProcess, name: str, kind: str) -> Outcome:
    from teelab.extension.hub.client import HubUser

    outcome = Outcome(name, kind)
    user = HubUser(hub, name)
    step = "login"
    try:
        began = mark = time.perf_counter()

        def lap(next_step: str) -> None:
            nonlocal mark, step
            now = time.perf_counter()
            outcome.seconds[step] = now - mark
            mark, step = now, next_step

        answer = user.login()
        if answer.status_code != 302:
            raise RuntimeError(f"login answered HTTP {answer.status_code}")
        lap("spawn")
        user.spawn()
        lap("kernel")
        kernel = user.start_kernel(KINDS[kind])["id"]
        lap("cell")
        output, reply = user.run_cell(kernel, CELLS[kind])
        lap("check")
        outcome.seconds["total"] = mark - began
        if reply.get("status") != "ok" or f"rows {ROWS}" not in output:
            raise RuntimeError(f"the cell failed: {output.strip()[-300:] or reply.get('ename')}")
        if kind == "teelab_sim":
            record = user.request("GET", f"teelab/api/kernels/{kernel}/attestation").json()
            if record.get("badge", {}).get("level") != "simulated":
                raise RuntimeError(f"the kernel is not attested: {record.get('badge')}")
        step = "memory"
        pid = server_pid(name)
        if pid is None:
            raise RuntimeError("no single-user server process found")
        outcome.pss_kb, outcome.pids = tree_pss(pid)
        outcome.server_pss_kb = pss_kb(pid)
        step = "stop"
        _stop_server(user)
    except Exception as error:  # every failure is counted with its reason; none ends the run
        outcome.failure = f"{step}: {type(error).__name__}: {error}"[:400]
    finally:
        user.session.close()
    return outcome


def strays(root: Path, exclude: Iterable[int]) -> list[int]:
    """Processes that still name this run's folder (servers, kernels, the broker, the proxy's pid file...)."""
    needle, skip = str(root).encode(), set(exclude)
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit()
        and int(e.name) not in skip
        and (needle in _cmdline(int(e.name)) or needle in _environ(int(e.name)))
    ]


def _shared_pss(hub: HubProcess, root: Path) -> tuple[dict[str, float], dict[int, bytes]]:
    """The processes every user shares: the hub, the proxy, the teelab-kbs service (PSS, MB); and every
    process below the hub at this moment."""
    result: dict[str, float] = {}
    everything: dict[int, bytes] = {}
    if hub.process is not None:
        result["hub"] = round(pss_kb(hub.process.pid) / 1024, 1)
        everything.update(tree(hub.process.pid))
    try:
        proxy = int((root / "jupyterhub-proxy.pid").read_text().strip())
        kb, found = tree_pss(proxy)
        result["proxy"] = round(kb / 1024, 1)
        everything.update(found)
    except (OSError, ValueError):
        pass
    service = next((p for p in strays(root, ()) if b"teelab.extension.hub.service" in _cmdline(p)), None)
    if service is not None:
        kb, found = tree_pss(service)
        result["kbs_service"] = round(kb / 1024, 1)  # the service page and the key broker, its child
        everything.update(found)
    return result, everything


def _summary(outcomes: list[Outcome], planned: int) -> dict[str, object]:
    done = [o for o in outcomes if o.failure is None]
    totals = [o.seconds["total"] for o in done]
    pss = [o.pss_kb / 1024 for o in done if o.pss_kb]
    server = [o.server_pss_kb / 1024 for o in done if o.server_pss_kb]
    steps = ("login", "spawn", "kernel", "cell")
    return {
        "users": planned,
        "completed": len(done),
        "failures": len(outcomes) - len(done),
        "not_run": planned - len(outcomes),
        "failure_reasons": sorted({o.failure for o in outcomes if o.failure})[:10],
        "login_to_first_result_seconds": {
            "median": round(median(totals), 2) if totals else None,
            "p95": round(percentile(totals, 95), 2) if totals else None,
            "max": round(max(totals), 2) if totals else None,
        },
        "step_seconds_median": {
            s: round(median([o.seconds[s] for o in done]), 2) if done else None for s in steps
        },
        "pss_mb_per_user": {
            "median": round(median(pss), 1) if pss else None,
            "p95": round(percentile(pss, 95), 1) if pss else None,
            "server_median": round(median(server), 1) if server else None,
        },
        "processes_per_user": max((len(o.pids) for o in done), default=0),
    }


def _ratio(a: object, b: object) -> float | None:
    return round(a / b, 2) if isinstance(a, float) and isinstance(b, float) and b else None


def run(users: int = 50, concurrency: int = 5, deadline_minutes: float = 30.0) -> dict[str, object]:
    from teelab.extension.hub.demo import HubProcess

    began = time.monotonic()
    deadline = began + deadline_minutes * 60
    names = {kind: [f"{kind[0]}{i:03d}" for i in range(1, users + 1)] for kind in KINDS}
    # Teelab and baseline users alternate, so drift on the shared machine hits both alike.
    queue = [(names[kind][i], kind) for i in range(users) for kind in KINDS]
    everyone = [name for name, _ in queue]
    outcomes: list[Outcome] = []
    left: list[int] = []
    with tempfile.TemporaryDirectory(prefix="teelab-hub-bench-") as scratch:
        root = Path(scratch)
        hub = HubProcess(
            root,
            users=(OWNER, *everyone),
            groups={GROUP: everyone, "operators": [OWNER]},
        )
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=concurrency)
        shared: dict[str, float] = {}
        seen: dict[int, bytes] = {}
        setup_seconds = 0.0
        try:
            hub.prepare()
            hub.start()
            hub.publish_sample(owner=OWNER, name=DATASET, grant=f"group:{GROUP}")
            setup_seconds = time.monotonic() - began

            def job(name: str, kind: str) -> Outcome | None:
                # Past the deadline nothing new starts; what runs is bounded by each step's own timeout.
                if stop.is_set() or time.monotonic() > deadline:
                    return None
                return one_user(hub, name, kind)

            pending: set[Future[Outcome | None]] = {pool.submit(job, n, k) for n, k in queue}
            with tqdm(total=len(queue), desc="hub users", unit="user") as bar:
                while pending:
                    if time.monotonic() > deadline:
                        stop.set()  # no user starts any more; those in flight finish
                    if time.monotonic() > deadline + GRACE_SECONDS:
                        break
                    finished, pending = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        outcome = future.result()
                        if outcome is not None:
                            outcomes.append(outcome)
                            bar.update()
                            bar.set_postfix(failures=sum(o.failure is not None for o in outcomes))
            shared, seen = _shared_pss(hub, root)
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            hub.stop()  # stops every server (and its kernels), the broker service and the proxy
            pool.shutdown(wait=True)
            for outcome in outcomes:
                seen.update(outcome.pids)
            left = _reap(root, seen)
    wall = time.monotonic() - began
    summary = {kind: _summary([o for o in outcomes if o.kind == kind], users) for kind in KINDS}
    tee, plain = summary["teelab_sim"], summary["plain"]
    latency_t, latency_p = tee["login_to_first_result_seconds"], plain["login_to_first_result_seconds"]
    pss_t, pss_p = tee["pss_mb_per_user"], plain["pss_mb_per_user"]
    assert isinstance(latency_t, dict) and isinstance(latency_p, dict)
    assert isinstance(pss_t, dict) and isinstance(pss_p, dict)
    failures = sum(int(str(s["failures"])) + int(str(s["not_run"])) for s in summary.values())
    result: dict[str, object] = {
        "users": users,
        "concurrency": concurrency,
        "deadline_minutes": deadline_minutes,
        "setup_seconds": round(setup_seconds, 1),
        "wall_seconds": round(wall, 1),
        **summary,
        "ratios": {
            "login_to_first_result_median": _ratio(latency_t["median"], latency_p["median"]),
            "login_to_first_result_p95": _ratio(latency_t["p95"], latency_p["p95"]),
            "pss_median": _ratio(pss_t["median"], pss_p["median"]),
        },
        "shared_pss_mb": shared,
        "stray_processes": len(left),
        "goal": {"failures": 0, "stray_processes": 0},
        "meets_goal": failures == 0 and not left,
    }
    write_result("hub_users", result)
    return result


def _reap(root: Path, seen: dict[int, bytes]) -> list[int]:
    """What outlived hub.stop(): a process the run measured that still runs the same command, or any that
    names this run's folder. Given 10 s to go, then killed (this run started it)."""

    def alive() -> list[int]:
        measured = {pid for pid, command in seen.items() if command and _cmdline(pid) == command}
        return sorted(measured | set(strays(root, (os.getpid(),))))

    deadline = time.monotonic() + 10
    left = alive()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = alive()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=50, help="hub users per kind (teelab and plain)")
    parser.add_argument("--concurrency", type=int, default=5, help="users in flight at once")
    parser.add_argument("--deadline-minutes", type=float, default=30.0, help="no user starts after this")
    parser.add_argument("--quick", action="store_true", help="5 users per kind (development)")
    options = parser.parse_args(argv)
    users = 5 if options.quick else options.users
    print(run(users, options.concurrency, options.deadline_minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
