"""Job callbacks: posted signed to an allow-listed loopback receiver, refused elsewhere."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading
import time

import pytest

from tests.api.conftest import CALLBACK_SECRET, free_port, manifest_yaml


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.received
    server.shutdown()


def test_a_finished_job_posts_a_signed_callback(api_server, produced_asset, receiver):
    url, received = receiver
    # The same manifest again: nothing to run, so the job ends (and calls back) at once.
    body = manifest_yaml([{"id": "crate", "prompt": "a wooden crate box", "tags": ["api-test"]}])
    reply = api_server.request("POST", f"/v1/jobs?callback_url={url}", body,
                               content_type="application/x-yaml")
    assert reply.status == 202, reply.body
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        time.sleep(0.2)
    assert received, api_server.log()
    headers, payload = received[0]
    expected = "sha256=" + hmac.new(CALLBACK_SECRET.encode(), payload, hashlib.sha256).hexdigest()
    assert headers["X-Foundry-Signature"] == expected
    assert reply.json()["batch_id"].encode() in payload


@pytest.mark.parametrize("url", [
    "https://example.com/hook",             # host not allow-listed
    "http://user:pw@127.0.0.1:9/hook",      # credentials
    "ftp://127.0.0.1/hook",                 # scheme
])
def test_a_callback_outside_the_allow_list_is_refused(api_server, url):
    reply = api_server.request("POST", "/v1/jobs", {"prompt": "a crate", "callback_url": url})
    assert reply.status == 422
    assert reply.json()["error"]["code"] == "callback_refused"
