"""Job-completion callbacks: the same host allow-list as manifest URLs, an HMAC signature.

A callback URL is accepted when it has no credentials and its host is in ``FOUNDRY_URL_HOSTS``
(the allow-list of manifest image URLs), over ``https://``; plain ``http://`` only to a
loopback host that is itself allow-listed (a receiver on this machine). Redirects are not
followed. The body is JSON; header :data:`SIGNATURE_HEADER` carries
``sha256=<hex HMAC-SHA256 of the body keyed by FOUNDRY_API_CALLBACK_SECRET>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from urllib.parse import urlsplit

from foundry3d.api.auth import is_loopback

SIGNATURE_HEADER = "X-Foundry-Signature"
TIMEOUT_S = 10.0


class CallbackRefused(ValueError):
    """The callback URL breaks the allow-list rules."""


def check_callback_url(url: str, allowed_hosts: Iterable[str], secret: str | None) -> str:
    """``url`` if it may be called back; raises :class:`CallbackRefused` saying why not."""
    if not secret:
        raise CallbackRefused("callbacks need a signing secret: set FOUNDRY_API_CALLBACK_SECRET")
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise CallbackRefused("callback URL may not contain credentials")
    host = (parts.hostname or "").lower()
    hosts = {h.lower() for h in allowed_hosts}
    if parts.scheme not in ("https", "http") or not host:
        raise CallbackRefused(f"callback URL {url!r} must be https://host/...")
    if host not in hosts:
        raise CallbackRefused(f"callback host {host!r} is not an allowed host (FOUNDRY_URL_HOSTS)")
    if parts.scheme == "http" and not is_loopback(host):
        raise CallbackRefused(f"callback URL {url!r} must use https:// (http:// only to loopback)")
    return url


def signature(body: bytes, secret: str) -> str:
    """The :data:`SIGNATURE_HEADER` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        raise urllib.error.HTTPError(newurl, code, "callback redirects are not followed",
                                     headers, fp)


def post_callback(url: str, payload: dict, secret: str) -> dict:
    """POST ``payload`` signed to ``url``; returns ``{"status": "delivered"|"failed", ...}``."""
    body = json.dumps(payload, sort_keys=True).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: signature(body, secret),
    })
    opener = urllib.request.build_opener(_NoRedirects())
    try:
        with opener.open(request, timeout=TIMEOUT_S) as response:
            return {"status": "delivered", "http_status": response.status}
    except urllib.error.HTTPError as exc:
        return {"status": "failed", "http_status": exc.code, "error": str(exc.reason)}
    except Exception as exc:  # noqa: BLE001 - any failure is reported on the job, not raised
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
