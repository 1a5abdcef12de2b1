"""The gateway's limits on its callers (issue 12, finding 2), through real sockets to a running `xsoar-local up`."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import Platform, start_platform, write_config

from xsoar_local.config import load_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    config = write_config(
        tmp_path_factory.mktemp("gateway-limits"),
        [{"name": "echo", "integration": "Echo Webhook"}],
        body_timeout=1,
    )
    running = start_platform(config)
    yield running
    running.stop()


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("announced", [100, 200_000], ids=["small body, read whole first", "streamed body"])
def test_a_trickled_reroute_body_gets_408_and_the_connection_closes(platform: Platform, announced: int) -> None:
    """
    Given a platform with server.body_timeout 1 s
    When a caller announces a body (small: the gateway reads it whole before going upstream; large: streamed)
         to the reroute, sends 10 bytes of it and then nothing
    Then it gets 408 request_timeout naming server.body_timeout and the connection closes (it was held for as long
         as the caller liked, and with it an upstream connection); a normal delivery right after is answered.
    """
    url = urlsplit(platform.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /instance/execute/echo HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {announced}\r\n\r\n" + '{"name": "'
            ).encode()
        )
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"request_timeout" in answer and b"server.body_timeout" in answer
    response = httpx.post(platform.url + "/instance/execute/echo", json={"name": "after a slow body"}, timeout=30)
    assert response.status_code == 200, response.text


def test_body_timeout_must_be_a_positive_number(tmp_path) -> None:
    """
    Given server.body_timeout 0
    When the config is loaded
    Then the problem names the key and the fix.
    """
    path = write_config(tmp_path, [], body_timeout=0)
    with pytest.raises(Exception) as refused:
        load_config(path)
    assert "server.body_timeout must be a number of seconds above 0, got 0 (fix: body_timeout: 30)" in str(
        refused.value
    )
