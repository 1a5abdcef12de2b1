"""How real senders fare at the connection level against a real instance: early answers (413, 401) read by
clients that write the whole body first, and keep-alive pools across idle pauses.

Each test starts the integration the platform's way (tests/conftest.py `launch`); `make test` runs them with the
instance on the dev venv (httptools + uvloop) and again on the image's stack (`--instance-python
.venv-image/bin/python`: h11 on asyncio).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOOPBACK, Instance, Launcher

pytestmark = pytest.mark.timeout(120)

TOKEN = {"identifier": "_header:X-Token", "password": "right-token"}
SMALL_LIMIT = {"max_body_mb": "0.01"}  # 10 KiB
BIG = 8 * 1024 * 1024  # well over what loopback socket buffers hold, so a server that closes early resets the write


def serving(launch: Launcher, **params: object) -> Instance:
    instance = launch({"credentials": TOKEN, **params})
    with httpx.Client() as client:
        instance.wait_serving(client)
    return instance


def big_event() -> bytes:
    return json.dumps({"name": "x" * BIG}).encode()


def test_urllib_gets_the_413_for_an_over_limit_body(launch: Launcher) -> None:
    """
    Given an instance with a 10 KiB body limit
    When urllib (which sends `Connection: close` and writes the whole body before it reads) posts 8 MiB
    Then it gets HTTPError 413 payload_too_large, not a connection reset or broken pipe.
    """
    instance = serving(launch, **SMALL_LIMIT)
    request = urllib.request.Request(
        instance.base_url + "/",
        data=big_event(),
        headers={"Content-Type": "application/json", "X-Token": "right-token"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 413
    assert json.loads(raised.value.read())["error"] == "payload_too_large"


def test_http_client_gets_the_401_before_a_chunked_body(launch: Launcher) -> None:
    """
    Given header-token auth
    When http.client sends an 8 MiB chunked body with a wrong token, all of it before reading
    Then it reads the 401 auth failure.
    """
    instance = serving(launch)
    connection = http.client.HTTPConnection(LOOPBACK, instance.port, timeout=30)
    try:
        chunks = (big_event()[i : i + 65536] for i in range(0, BIG, 65536))
        connection.request("POST", "/", body=chunks, headers={"X-Token": "wrong"}, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 401
        assert json.loads(response.read())["error"] == "unauthorized"
    finally:
        connection.close()


NODE_SCRIPT = r"""
const http = require("http");
const [port, mode] = process.argv.slice(2);
const big = Buffer.alloc(8 * 1024 * 1024, "x");
function post(agent, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request({host: "127.0.0.1", port, method: "POST", path: "/", agent,
                              headers: {"X-Token": "right-token", "Content-Type": "application/json", ...headers}},
      (res) => { let text = ""; res.on("data", (d) => text += d);
                 res.on("end", () => resolve({status: res.statusCode, reused: req.reusedSocket,
                                              keepAlive: res.headers["keep-alive"] || null, text})); });
    req.on("error", reject);
    req.end(body);
  });
}
(async () => {
  const out = [];
  if (mode === "early") {
    out.push(await post(false, big, {"Connection": "close"}));
    out.push(await post(false, big, {}));
  } else {
    const agent = new http.Agent({keepAlive: true});
    for (let i = 0; i < 3; i++) {
      out.push(await post(agent, '{"name": "pooled"}', {}));
      await new Promise((r) => setTimeout(r, Number(mode) * 1000));
    }
    agent.destroy();
  }
  console.log(JSON.stringify(out.map(({text, ...rest}) => rest)));
})().catch((error) => { console.log(JSON.stringify({error: String(error)})); process.exit(1); });
"""


def run_node(tmp_path, *args: str) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "client.js"
    script.write_text(NODE_SCRIPT)
    result = subprocess.run([node, str(script), *args], capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_node_http_gets_the_413_with_and_without_connection_close(launch: Launcher, tmp_path) -> None:
    """
    Given a 10 KiB body limit
    When Node's http module posts 8 MiB with `Connection: close`, and again without it
    Then both get the 413 (Node reports no socket error).
    """
    instance = serving(launch, **SMALL_LIMIT)
    answers = run_node(tmp_path, str(instance.port), "early")
    assert [answer["status"] for answer in answers] == [413, 413]


def test_a_node_keep_alive_pool_follows_the_keep_alive_hint(launch: Launcher, tmp_path) -> None:
    """
    Given keep_alive_seconds 2
    When a Node keep-alive agent posts three times, idle for 2.5 s in between (past the server's timeout)
    Then every post succeeds, each answer carries `timeout=2`, and no post went on a pooled connection the
         server had let go (Node retired it on the hint, so none is reused).
    """
    instance = serving(launch, keep_alive_seconds="2")
    answers = run_node(tmp_path, str(instance.port), "2.5")
    assert [answer["status"] for answer in answers] == [200, 200, 200]
    assert {answer["keepAlive"] for answer in answers} == {"timeout=2"}
    assert not any(answer["reused"] for answer in answers)


def test_a_pooled_client_reuses_its_connection_after_a_pause_longer_than_five_seconds(launch: Launcher) -> None:
    """
    Given the default keep-alive timeout (120 s; it was 5 s, shorter than senders' pools)
    When a pooled client that keeps idle connections for 90 s (as Go's default transport does; httpx here)
         posts, stays idle for 6 s, and posts again
    Then both are created, on the same connection (same client port), and the answer states `timeout=120`.
    """
    instance = serving(launch)
    limits = httpx.Limits(keepalive_expiry=90)
    with httpx.Client(base_url=instance.base_url, headers={"X-Token": "right-token"}, limits=limits) as client:
        first = client.post("/", json={"name": "one"})
        port_first = first.extensions["network_stream"].get_extra_info("client_addr")[1]
        time.sleep(6)  # the idle pause is what is tested
        second = client.post("/", json={"name": "two"})
        port_second = second.extensions["network_stream"].get_extra_info("client_addr")[1]
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["keep-alive"] == "timeout=120"
    assert port_first == port_second


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_draining_an_over_limit_body_keeps_memory_bounded(launch: Launcher) -> None:
    """
    Given an instance with a 10 KiB body limit
    When a sender writes 48 MiB (Content-Length announced) before reading
    Then it reads the 413, and the instance's resident memory grows by less than 16 MiB while it throws the body
         away (it is read and dropped, never held).
    """
    instance = serving(launch, **SMALL_LIMIT)
    before = rss_bytes(instance.process.pid)
    size = 48 * 1024 * 1024
    connection = http.client.HTTPConnection(LOOPBACK, instance.port, timeout=60)
    try:
        chunks = (b" " * 65536 for _ in range(size // 65536))
        headers = {"X-Token": "right-token", "Content-Length": str(size), "Content-Type": "application/json"}
        connection.request("POST", "/", body=chunks, headers=headers)
        response = connection.getresponse()
        assert response.status == 413
        response.read()
    finally:
        connection.close()
    assert rss_bytes(instance.process.pid) - before < 16 * 1024 * 1024
