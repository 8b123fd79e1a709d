"""The pin file of ``teelab hub verify``: what a user accepted for each hub, to notice when it changes.

One JSON file (default ``<teelab config>/hub-pins.json``, mode 0600 in a 0700 folder), per hub origin: the
front door's TLS key (SPKI-SHA256) and measurement, and per user server the same. Pins hold no secret — they
are public key hashes and measurements — but a writable pin file would let another local user make a swapped
key look pinned, so a pin file others may write is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from teelab.errors import ConfigError
from teelab.extension.hub.verify_checks import CheckLine
from teelab.files import replace_atomically
from teelab.paths import config_dir

PIN_FILE = "hub-pins.json"
VERSION = 1
MAX_PIN_FILE_BYTES = 1 << 20


def default_pin_file() -> Path:
    return config_dir() / PIN_FILE


@dataclass(frozen=True)
class Pin:
    tls_spki_sha256: str
    measurement: str | None
    controller: str | None = None  # a server's: SHA-256 of the hub spawner's G_s.pub


@dataclass
class HubPins:
    front_door: Pin | None = None
    servers: dict[str, Pin] = field(default_factory=dict)


def _pin(data: object, where: str) -> Pin:
    if not isinstance(data, dict) or not isinstance(data.get("tls_spki_sha256"), str):
        raise ConfigError(f"{where}: a pin needs tls_spki_sha256")
    measurement, controller = data.get("measurement"), data.get("controller")
    return Pin(
        str(data["tls_spki_sha256"]),
        measurement if isinstance(measurement, str) else None,
        controller if isinstance(controller, str) else None,
    )


class PinFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, object]:
        try:
            if os.stat(self.path).st_mode & 0o022:
                raise ConfigError(
                    f"the pin file {self.path} is writable by other users",
                    hint=f"chmod 600 {self.path}, then check its pins by running teelab hub verify again",
                )
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_PIN_FILE_BYTES + 1)
        except FileNotFoundError:
            return {"version": VERSION, "hubs": {}}
        except OSError as error:
            raise ConfigError(f"cannot read the pin file {self.path}: {error.strerror or error}") from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise ConfigError(f"the pin file {self.path} is not JSON") from None
        if (
            not isinstance(data, dict)
            or data.get("version") != VERSION
            or not isinstance(data.get("hubs"), dict)
        ):
            raise ConfigError(f"the pin file {self.path} is not a version {VERSION} teelab pin file")
        return data

    def load(self, origin: str) -> HubPins:
        hubs = self._read()["hubs"]
        assert isinstance(hubs, dict)
        entry = hubs.get(origin)
        if entry is None:
            return HubPins()
        where = f"{self.path} [{origin}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: not an object")
        servers = entry.get("servers", {})
        if not isinstance(servers, dict):
            raise ConfigError(f"{where}: servers is not an object")
        front = entry.get("front_door")
        return HubPins(
            front_door=_pin(front, where) if front is not None else None,
            servers={str(name): _pin(pin, f"{where} {name}") for name, pin in servers.items()},
        )

    def save(self, origin: str, pins: HubPins) -> None:
        data = self._read()
        hubs = data["hubs"]
        assert isinstance(hubs, dict)
        hubs[origin] = {
            "front_door": vars(pins.front_door) if pins.front_door else None,
            "servers": {name: vars(pin) for name, pin in sorted(pins.servers.items())},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_atomically(
            self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o600
        )


def compare_pin(name: str, pinned: Pin | None, seen: Pin, *, update: bool) -> CheckLine:
    """``<name> pin``: first use pins; a changed key or measurement fails unless the user asked to update."""
    if pinned is None:
        return CheckLine(f"{name} pin", True, f"first use: pinned key {seen.tls_spki_sha256[:16]}…")
    changes = []
    if pinned.tls_spki_sha256 != seen.tls_spki_sha256:
        changes.append(f"TLS key {pinned.tls_spki_sha256[:16]}… → {seen.tls_spki_sha256[:16]}…")
    if pinned.measurement != seen.measurement:
        changes.append(f"measurement {str(pinned.measurement)[:16]}… → {str(seen.measurement)[:16]}…")
    if pinned.controller != seen.controller:
        changes.append(f"controller {str(pinned.controller)[:16]}… → {str(seen.controller)[:16]}…")
    if not changes:
        return CheckLine(f"{name} pin", True, "same key, measurement and controller as pinned")
    if update:
        return CheckLine(f"{name} pin", True, "updated (--update-pins): " + "; ".join(changes))
    return CheckLine(
        f"{name} pin",
        False,
        "changed since you pinned it: " + "; ".join(changes) + " (a restart makes a new key; if you expected "
        "it, the attestation above passed for the new one: accept it with --update-pins)",
    )
