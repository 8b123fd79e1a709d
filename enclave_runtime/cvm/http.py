"""The one network call teelab's backends make — fetching public, signed collateral — behind a seam.

Everything fetched (AMD certificates, Intel TCB info, QE identities, CRLs) is signed by the vendor and checked by
the verifier, so the transport is not trusted with integrity. Tests inject a fetcher and never touch the network.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from teelab.errors import PlatformError

MAX_RESPONSE = 4 * 1024 * 1024
TIMEOUT = 30.0


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Fetcher = Callable[[str], HttpResponse]


def urllib_fetcher(*, verify_tls: bool = True) -> Fetcher:
    """A fetcher over urllib. ``verify_tls=False`` is for a local PCCS with a self-signed certificate
    (what Intel's own quote library allows with ``use_secure_cert: false``): the documents are signed anyway."""
    context = ssl.create_default_context()
    if not verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    def fetch(url: str) -> HttpResponse:
        if not url.startswith(("https://", "http://")):
            raise PlatformError(f"refusing to fetch {url!r}: only http(s) URLs are fetched")
        request = urllib.request.Request(url, headers={"Accept": "*/*", "User-Agent": "teelab"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:  # noqa: S310
                body = response.read(MAX_RESPONSE + 1)
                headers = {k.lower(): v for k, v in response.headers.items()}
                status = int(response.status)
        except urllib.error.HTTPError as error:
            return HttpResponse(
                error.code, error.read(MAX_RESPONSE), {k.lower(): v for k, v in error.headers.items()}
            )
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise PlatformError(f"cannot fetch {url}: {getattr(error, 'reason', error)}") from None
        if len(body) > MAX_RESPONSE:
            raise PlatformError(f"{url} answered with more than {MAX_RESPONSE} bytes; refusing it")
        return HttpResponse(status, body, headers)

    return fetch


def get(fetch: Fetcher, url: str, what: str) -> HttpResponse:
    response = fetch(url)
    if response.status != 200:
        detail = response.body[:200].decode("utf-8", "replace").strip()
        raise PlatformError(f"{what}: {url} answered HTTP {response.status}{': ' + detail if detail else ''}")
    return response
