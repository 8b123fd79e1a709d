"""One ``teelab hub verify`` run: the front door, then (with ``--user``) the user's own server, then the pins.

The user's hub token is sent only after every front-door check passed, over the connection those checks were
about: to a man in the middle it would be a credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from teelab.extension.hub.front_door_protocol import FrontDoorError
from teelab.extension.hub.verify_channel import HubAddress, HubChannel
from teelab.extension.hub.verify_checks import CheckLine
from teelab.extension.hub.verify_front_door import FrontDoorOutcome, verify_front_door
from teelab.extension.hub.verify_pins import HubPins, Pin, PinFile, compare_pin
from teelab.extension.hub.verify_server import fetch_record, verify_server
from teelab.gateway.anchors import TrustAnchors
from teelab.gateway.policy import AppraisalPolicy
from teelab.timeutil import utcnow


@dataclass(frozen=True)
class ServerRequest:
    user: str
    token: str = field(repr=False)
    server_name: str = ""
    policy: AppraisalPolicy | None = None  # None: the front door's policy


@dataclass
class VerifyReport:
    lines: list[CheckLine]

    @property
    def ok(self) -> bool:
        return bool(self.lines) and all(line.passed for line in self.lines)

    @property
    def first_failure(self) -> CheckLine | None:
        return next((line for line in self.lines if not line.passed), None)


def run_verify(
    address: HubAddress,
    policy: AppraisalPolicy,
    pin_file: PinFile,
    *,
    server: ServerRequest | None = None,
    update_pins: bool = False,
    cafile: str | None = None,
    collateral: Path | None = None,
    anchors: TrustAnchors | None = None,
) -> VerifyReport:
    """Every check, one line each; the pins are saved only when all passed."""
    at = utcnow()
    pins = pin_file.load(address.origin)
    try:
        channel = HubChannel(address, cafile=cafile)
    except FrontDoorError as error:
        return VerifyReport([CheckLine("TLS", False, error.message)])
    with channel:
        front = verify_front_door(channel, policy, at=at, collateral=collateral, anchors=anchors)
        lines = front.lines
        seen = Pin(channel.tls_spki_sha256.hex(), front.measurement)
        if front.ok:
            lines.append(compare_pin("front door", pins.front_door, seen, update=update_pins))
        pins.front_door = seen
        if server is not None:
            if not all(line.passed for line in lines):
                lines.append(
                    CheckLine(
                        "server record", False, "not asked: your token goes only over a verified connection"
                    )
                )
            else:
                lines += _server_lines(
                    channel, server, policy, pins, at, collateral, front, anchors, update_pins
                )
    report = VerifyReport(lines)
    if report.ok:
        pin_file.save(address.origin, pins)
    return report


def _server_lines(
    channel: HubChannel,
    server: ServerRequest,
    policy: AppraisalPolicy,
    pins: HubPins,
    at: datetime,
    collateral: Path | None,
    front: FrontDoorOutcome,
    anchors: TrustAnchors | None,
    update_pins: bool,
) -> list[CheckLine]:
    try:
        record = fetch_record(channel, server.user, server.token, server.server_name)
    except FrontDoorError as error:
        return [CheckLine("server record", False, error.message)]
    fallback = front.answer.collateral if front.answer is not None else None
    outcome = verify_server(
        record, server.policy or policy, at=at, collateral=collateral or fallback, anchors=anchors
    )
    lines = outcome.lines
    controller = record.controller.hex() if record.controller is not None else None
    seen = Pin(record.tls_spki_sha256.hex(), outcome.measurement, controller)
    if all(line.passed for line in lines):
        lines.append(compare_pin("server", pins.servers.get(record.server), seen, update=update_pins))
    pins.servers[record.server] = seen
    return lines
