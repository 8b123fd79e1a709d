"""``teelab hub verify``'s ``hub pod`` line: the hub, the proxy and the service are in the front door's image.

A hub pod's front door sends, with its evidence, the measured layout of its image (:mod:`.hub_pod_image`): the
digest of the hub's config, of node and configurable-http-proxy's files, the versions, the service module. It
arrives over the TLS connection whose key the evidence binds, so once the evidence, the policy, the key and the
nonce checks passed it is the attested program's own statement — and the measurement the user's policy pins
covers each of those files (another config or proxy file is another measurement: ``✗ front door policy``).
"""

from __future__ import annotations

from collections.abc import Mapping

from teelab.extension.hub.verify_checks import CheckLine

POD_CHECK = "hub pod"


def pod_line(pod: Mapping[str, str], *, verified: bool) -> CheckLine:
    """The ``hub pod`` line for a front door that runs the hub; it passes only over a verified front door."""
    if not verified:
        return CheckLine(
            POD_CHECK, False, "not trusted: the front door's evidence or its binding failed above"
        )
    config, proxy = pod.get("hub_config_sha256", ""), pod.get("proxy_sha256", "")
    if pod.get("image") != "hub-pod" or len(config) != 64 or len(proxy) != 64:
        return CheckLine(POD_CHECK, False, "the front door's pod description is incomplete")
    return CheckLine(
        POD_CHECK,
        True,
        "hub, proxy and service measured in the front door's image: "
        f"JupyterHub {pod.get('jupyterhub', '?')} with config sha256 {config[:16]}…, "
        f"configurable-http-proxy {pod.get('chp_version', '?')} (node and its files) sha256 {proxy[:16]}…, "
        f"service {pod.get('service', '?')}; all on loopback inside the pod",
    )
