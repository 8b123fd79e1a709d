"""The Dask side's parsers of bytes it does not control fail only with teelab's own errors, whatever the input:
the attestation comm's request (anyone who runs code in the kernel can send it) and a host agent's address
(``TeeCluster(hosts=...)``, the gateway's configuration)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teelab.dask.comm import AttestationBroadcaster, CommRequestError, decode_request
from teelab.enclave_runtime.agent.client import HostTarget
from teelab.errors import ConfigError

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.sampled_from(["clusters", 1, "request", "version"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
requests = st.dictionaries(
    st.sampled_from(["request", "version"]) | st.text(max_size=8), json_values, max_size=4
)
messages = (
    requests.map(lambda data: {"content": {"data": data}})
    | st.dictionaries(st.sampled_from(["content", "data"]), json_values | requests, max_size=2)
    | json_values
)


class SilentComm:
    comm_id = "fuzz"

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        self.sent.append(data)

    def close(
        self, data: Any = None, metadata: Any = None, buffers: Any = None, deleting: bool = False
    ) -> None:
        return None

    def on_msg(self, callback: Any) -> None:
        return None

    def on_close(self, callback: Any) -> None:
        return None


@settings(max_examples=400, deadline=None)
@given(messages)
def test_any_comm_message_is_the_one_request_or_a_typed_error(message: Any) -> None:
    try:
        decode_request(message)
    except CommRequestError as error:
        assert error.code in ("bad_request", "unsupported_version", "unknown_request")
    else:
        assert message["content"]["data"] == {"request": "clusters", "version": 1}
    opened = SilentComm()
    AttestationBroadcaster().on_open(opened, message)  # never raises: one reply, an error or the state
    assert len(opened.sent) == 1 and opened.sent[0]["type"] in ("error", "clusters")


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["grpc://", "grpcs://", "", "http://"])
    .flatmap(lambda scheme: st.tuples(st.just(scheme), st.text(max_size=30), st.text(max_size=8)))
    .map(lambda parts: f"{parts[0]}{parts[1]}:{parts[2]}")
    | st.text(max_size=60)
)
def test_any_host_agent_address_parses_or_is_a_config_error(text: str) -> None:
    try:
        target = HostTarget.parse(text)
    except ConfigError:
        return
    assert 0 < target.port < 65536 and target.host and target.host.isprintable()
    assert HostTarget.parse(str(target)) == target


@pytest.mark.parametrize(
    "text",
    ["grpcs://tee-host:²", "grpcs://tee-host:" + "1" * 5000, "grpcs://tee-host:١٢", "grpcs://tee\nhost:7443"],
)
def test_a_port_of_other_digits_or_a_host_with_control_characters_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        HostTarget.parse(text)
