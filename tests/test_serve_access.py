"""Who may use the live view: the token on every endpoint when shared, its three carriers (header, query,
the page's cookie), Host/Origin checks against DNS rebinding, non-ASCII tokens, and tokens from a file or
the environment."""
from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

from runtime.capture import Frame
from runtime.pipeline import Result
from runtime.serve import LiveServer
from runtime.serve.access import TOKEN_ENV, resolve_token
from runtime.types import Detections
from test_serve import _get

pytest.importorskip("aiohttp")

PRIVATE = ["/", "/static/app.js", "/api/snapshot", "/api/detections", "/api/stats", "/stream.mjpg"]


def _result(i: int, shape=(96, 128, 3)) -> Result:
    image = np.full(shape, i % 255, np.uint8)
    det = Detections(np.array([[10, 10, 40, 30]], np.float32), np.array([0.9], np.float32), np.array([0]), ("red",), shape[:2])
    return Result(Frame(image, i, time.perf_counter()), det, 1.0)


@pytest.fixture
def shared():
    """Bound to every address (as `--host 0.0.0.0`), with the generated token."""
    server = LiveServer("0.0.0.0", 0, allow_remote=True).start()
    for i in range(3):
        server(_result(i))
    yield server, f"http://127.0.0.1:{server.port}"
    server.close()


def _first_stream_part(url: str, headers: dict) -> bytes:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        buf = b""
        while b"\xff\xd9" not in buf:
            buf += r.read1(65536)
        return buf


def test_a_shared_view_needs_the_token_on_every_endpoint(shared):
    server, base = shared
    for path in PRIVATE:
        assert _get(base + path)[0] == 401, path
    assert b"token" in _get(base + "/")[1]  # the page says why, in one line
    assert _get(base + "/api/prompts", data=b"{}", method="POST")[0] == 401
    assert _get(base + "/healthz")[0] == 200  # liveness probes need none (frame count only)
    by_header = {"X-Edgedet-Token": server.token}
    for path in PRIVATE[:-1]:
        assert _get(base + path, headers=by_header)[0] == 200, path
    assert _get(f"{base}/api/stats?token={server.token}")[0] == 200
    # the start-up URL sets a cookie the page's other requests (scripts, stream, API) carry
    status, _, headers = _get(f"{base}/?token={server.token}")
    cookie = headers["Set-Cookie"]
    assert status == 200 and cookie.startswith(f"edgedet_token_{server.port}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    by_cookie = {"Cookie": cookie.split(";")[0]}
    assert _get(base + "/api/detections", headers=by_cookie)[0] == 200
    assert _get(base + "/static/app.js", headers=by_cookie)[0] == 200
    assert _first_stream_part(base + "/stream.mjpg", by_cookie)
    assert _get(base + "/api/stats", headers={"Cookie": f"edgedet_token_{server.port}=wrong"})[0] == 401


def test_a_non_ascii_token_is_refused_not_an_error(shared):
    server, base = shared
    assert _get(base + "/api/stats?token=%C3%A9t%C3%A9%E2%9C%93")[0] == 401
    assert _get(base + "/api/stats", headers={"X-Edgedet-Token": "été"})[0] == 401
    assert _get(base + "/api/stats", headers={"Cookie": f"edgedet_token_{server.port}=%FF\u00e9"})[0] == 401
    assert _get(base + "/api/prompts?token=%C3%A9", data=b"{}", method="POST")[0] == 401


def test_loopback_needs_the_token_everywhere_only_when_one_is_given():
    given = LiveServer(port=0, token="s3cret").start()
    generated = LiveServer(port=0).start()
    try:
        given(_result(0))
        generated(_result(0))
        assert _get(f"http://127.0.0.1:{given.port}/api/detections")[0] == 401
        assert _get(f"http://127.0.0.1:{given.port}/api/detections?token=s3cret")[0] == 200
        assert _get(f"http://127.0.0.1:{generated.port}/api/detections")[0] == 200  # watching is open on loopback
        assert _get(f"http://127.0.0.1:{generated.port}/api/prompts", data=b"{}", method="POST")[0] == 401  # changes are not
    finally:
        given.close()
        generated.close()


def test_host_and_origin_are_checked_against_dns_rebinding(shared):
    server, base = shared
    ok = {"X-Edgedet-Token": server.token}
    port = server.port
    # bound to every address: any address literal names this machine; a domain name is a rebinding page's
    assert _get(base + "/api/stats", headers={**ok, "Host": f"192.168.1.7:{port}"})[0] == 200
    assert _get(base + "/api/stats", headers={**ok, "Host": f"[::1]:{port}"})[0] == 200
    status, body, _ = _get(base + "/api/stats", headers={**ok, "Host": f"evil.example:{port}"})
    assert status == 403 and "DNS rebinding" in json.loads(body)["error"]
    # another site's page may not call the API, even with the cookie
    status, body, _ = _get(base + "/api/detections", headers={**ok, "Origin": "http://evil.example"})
    assert status == 403 and "evil.example" in json.loads(body)["error"]
    assert _get(base + "/api/prompts", data=b"{}", method="POST", headers={**ok, "Origin": f"http://127.0.0.1:{port + 1}"})[0] == 403
    assert _get(base + "/api/prompts", data=b"{}", method="POST", headers={**ok, "Origin": f"http://127.0.0.1:{port}"})[0] == 404
    # loopback, no token given: watching is open, so Host is the only guard against a rebinding page
    local = LiveServer(port=0, allowed_hosts=("cam.lan",)).start()
    try:
        local(_result(0))
        lbase = f"http://127.0.0.1:{local.port}"
        assert _get(lbase + "/api/detections", headers={"Host": f"localhost:{local.port}"})[0] == 200
        assert _get(lbase + "/api/detections", headers={"Host": f"cam.lan:{local.port}"})[0] == 200
        assert _get(lbase + "/api/detections", headers={"Host": f"attacker.example:{local.port}"})[0] == 403
        assert _get(lbase + "/api/detections", headers={"Host": f"10.0.0.5:{local.port}"})[0] == 403  # not this bind
        assert _get(lbase + "/", headers={"Host": "<script>x</script>"})[1].count(b"<script>x") == 0  # reason escaped
    finally:
        local.close()


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token(token_file=str(path), env={}) == ("from-file", str(path))
    assert resolve_token(env={TOKEN_ENV: "from-env"}) == ("from-env", f"${TOKEN_ENV}")
    assert resolve_token("from-flag", env={TOKEN_ENV: "from-env"})[0] == "from-flag"
    assert resolve_token(env={}) == (None, "")
    with pytest.raises(ValueError, match="not both"):
        resolve_token("a", str(path), env={})
    with pytest.raises(ValueError, match="cannot read the token file .*missing"):
        resolve_token(token_file=str(tmp_path / "missing"), env={})
    with pytest.raises(ValueError, match="A-Z a-z 0-9"):
        resolve_token("pâté", env={})
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    server = LiveServer(port=0).start()  # a token from the environment is a token given on purpose
    try:
        server(_result(0))
        assert server.token == "env-token" and "env-token" in server.url
        assert _get(f"http://127.0.0.1:{server.port}/api/stats")[0] == 401
        assert _get(f"http://127.0.0.1:{server.port}/api/stats", headers={"X-Edgedet-Token": "env-token"})[0] == 200
    finally:
        server.close()


def test_run_command_reads_the_token_options(tmp_path):
    import argparse

    from runtime.serve.cli_options import add_serve_arguments, server_options

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    (tmp_path / "t.txt").write_text("tok\n")
    args = parser.parse_args(["--serve", "8080", "--token-file", str(tmp_path / "t.txt"), "--allow-host", "cam.lan", "--max-viewers", "3"])
    assert server_options(args) == {"token": None, "token_file": str(tmp_path / "t.txt"), "allowed_hosts": ("cam.lan",),
                                   "max_viewers": 3}


def test_a_bad_token_option_fails_before_anything_loads(tmp_path, capsys):
    from runtime.cli import main

    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "absent.onnx"), "--serve", "8080", "--token-file", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot read the token file" in err and "nope" in err and "Traceback" not in err


def test_a_shared_view_prints_urls_that_open_it(shared, capsys):
    """Bound to 0.0.0.0 the URL printed is one a browser can open (not http://0.0.0.0), plus the LAN name."""
    import socket

    server, _ = shared
    assert server.url.startswith(f"http://127.0.0.1:{server.port}/?token=")
    lan = server.lan_url
    assert lan == f"http://{socket.gethostname().lower()}.local:{server.port}/?token={server.token}"
    assert _get(server.url)[0] == 200  # the printed URL works as printed
    host = {"Host": f"{socket.gethostname().lower()}.local:{server.port}"}  # what a browser on the LAN sends
    assert _get(f"http://127.0.0.1:{server.port}/api/stats?token={server.token}", headers=host)[0] == 200
    server.announce()
    out = capsys.readouterr().out
    assert "0.0.0.0" not in out and server.url in out and lan in out


def test_max_viewers_is_an_option_of_every_command_that_serves():
    from edgedet.cli import build_parser

    parser = build_parser()
    for command in (["run", "--model", "m.xml", "--source", "0"], ["track", "--model", "m.xml", "--source", "0"], ["demo"]):
        args = parser.parse_args(command + ["--serve", "8080", "--max-viewers", "3"])
        assert args.max_viewers == 3, command[0]
