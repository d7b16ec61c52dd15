"""Nobody in uninvited: the login on a served app (real HTTP), the refusal to serve beyond
this machine without one, and what a browser may not ask for (remote code, datasets
outside data/)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from core.cli.main import main
from tests.browser_support import free_port, serve_app
from webui import guard
from webui.tabs.train import handlers as training

ROOT = Path(__file__).resolve().parent.parent


def _status(opener: urllib.request.OpenerDirector, url: str, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_served_app_answers_401_until_logged_in(tmp_path):
    with serve_app(tmp_path, env={guard.AUTH_ENV: "alice:s3cret-pw"}) as app:
        anon = urllib.request.build_opener()
        join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x"}).encode()
        json_header = {"Content-Type": "application/json"}
        assert _status(anon, app.url + "config") == 401
        assert _status(anon, app.url + "gradio_api/info") == 401
        assert _status(anon, app.url + "gradio_api/queue/join", join, json_header) == 401
        assert _status(anon, app.url + "gradio_api/upload", b"", json_header) == 401

        jar = http.cookiejar.CookieJar()
        user = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        wrong = urllib.parse.urlencode({"username": "alice", "password": "nope"}).encode()
        assert _status(user, app.url + "login", wrong) == 400
        assert _status(user, app.url + "config") == 401
        right = urllib.parse.urlencode({"username": "alice", "password": "s3cret-pw"}).encode()
        assert _status(user, app.url + "login", right) == 200
        assert _status(user, app.url + "config") == 200
        assert _status(user, app.url + "gradio_api/info") == 200


def test_no_login_beyond_loopback_refuses_at_once_and_binds_nothing(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != guard.AUTH_ENV}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "core.cli", "webui", "--host", "0.0.0.0",
                           "--port", str(port)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert time.time() - t0 < 30
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to serve on 0.0.0.0 without a login" in lines[0]
    assert "PEFT_STUDIO_AUTH=user:password" in lines[0] and "--auth-file" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    with socket.socket() as s:  # the port was never taken
        s.bind(("0.0.0.0", port))


@pytest.mark.parametrize("content, words", [
    ("alice:pw\nbob\n", "line 2 is not user:password"),
    ("alice:pw\n:pw\nbob:\n", "line 2, 3 is not user:password"),
    ("# nobody\n\n", "no user:password line"),
    (b"\xff\xfe:pw\n", "not UTF-8"),
])
def test_auth_file_bad_lines_are_named(tmp_path, capsys, content, words):
    path = tmp_path / "logins.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["webui", "--host", "0.0.0.0", "--auth-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_auth_file_missing_or_a_folder(tmp_path, capsys):
    assert main(["webui", "--host", "0.0.0.0", "--auth-file", str(tmp_path / "no")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["webui", "--host", "0.0.0.0", "--auth-file", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
    ("192.168.1.5", False), ("example.org", False), ("", False),
])
def test_loopback(host, loopback):
    assert guard.is_loopback(host) is loopback


def test_logins_from_env_and_file(tmp_path):
    assert guard.logins(env={guard.AUTH_ENV: "alice:a:b"}) == [("alice", "a:b")]
    assert guard.logins(env={}) is None
    path = tmp_path / "f"
    path.write_text("# team\nalice:one\n\nbob:two\n")
    assert guard.logins(str(path), env={}) == [("alice", "one"), ("bob", "two")]
    guard.check_serving("0.0.0.0", [("alice", "one-two-three")])  # a login: allowed
    with pytest.raises(guard.AccessError, match="the password of bob is shorter than 8"):
        guard.check_serving("0.0.0.0", [("alice", "one-two-three"), ("bob", "two")])
    guard.check_serving("127.0.0.1", [("bob", "two")])  # loopback: any login will do
    guard.check_serving("127.0.0.1", None)


# -- what a browser may ask for -----------------------------------------------------------
def _values(**changes):
    from core.schema.config import SETTINGS

    values = {n: (list(s.default) if isinstance(s.default, list) else s.default)
              for n, s in SETTINGS.items()}
    return {**values, **changes}


def test_remote_code_refused_from_the_browser_unless_allowed(saves, data, monkeypatch):
    monkeypatch.setattr(guard.POLICY, "allow_remote_code", False)
    started = training.start(_values(trust_remote_code=True))
    assert started.run_dir is None
    assert "trust_remote_code" in started.message and "--allow-remote-code" in started.message
    assert not any(saves.iterdir())
    with pytest.raises(Exception, match="--allow-remote-code"):
        training.inspect_payload(_values(trust_remote_code=True))
    monkeypatch.setattr(guard.POLICY, "allow_remote_code", True)
    cli, _, problems = training.preview(_values(trust_remote_code=True))
    assert problems == "" and "--trust-remote-code" in cli


def test_remote_code_widget_is_disabled_with_a_note(monkeypatch):
    import gradio as gr

    from core.schema.config import SETTINGS
    from webui.i18n import I18n
    from webui.tabs.train import _widget

    monkeypatch.setattr(guard.POLICY, "allow_remote_code", False)
    with gr.Blocks():
        off = _widget(SETTINGS["trust_remote_code"], I18n(), "lora")
    assert off.interactive is False and "--allow-remote-code" in off.info
    monkeypatch.setattr(guard.POLICY, "allow_remote_code", True)
    with gr.Blocks():
        on = _widget(SETTINGS["trust_remote_code"], I18n(), "lora")
    assert on.interactive is not False


def test_cli_keeps_trust_remote_code(saves, capsys):
    assert main(["train", "--trust-remote-code", "--print-config"]) == 0
    assert "trust_remote_code: true" in capsys.readouterr().out


@pytest.mark.parametrize("changes, words", [
    (dict(nnodes=2, master_addr="10.9.8.7"), "--allow-multi-node"),
    (dict(node_rank=1, nnodes=2, master_addr="attacker.example"), "--allow-multi-node"),
    (dict(stage="dpo", init_from_run="/etc"), "'/etc' is not a run in saves/"),
    (dict(stage="dpo", ref_run="../elsewhere"), "`ref_run`: '../elsewhere' is not a run"),
])
def test_browser_cannot_name_other_machines_or_folders(saves, data, monkeypatch, changes,
                                                       words):
    """A page may not make the server connect to a host it names (torch's TCPStore), nor
    read a model from any server folder as a start or reference run; the CLI may."""
    monkeypatch.setattr(guard.POLICY, "allow_multi_node", False)
    started = training.start(_values(**changes))
    assert started.run_dir is None and words in started.message
    assert not any(saves.iterdir())
    if "nnodes" in changes:
        monkeypatch.setattr(guard.POLICY, "allow_multi_node", True)
        assert not [p for p in guard.browser_problems(_values(**changes)) if "nnodes" in p]


@pytest.mark.parametrize("dataset", ["/etc/passwd", "../secret.json", "data/../../x.json"])
def test_browser_dataset_outside_data_refused(saves, data, dataset):
    started = training.start(_values(dataset=[dataset]))
    assert started.run_dir is None
    assert "outside" in started.message and "only from the CLI" in started.message
    assert not any(saves.iterdir())


def test_browser_dataset_registered_or_under_data_allowed(data):
    (data / "mine.json").write_text('[{"instruction": "a", "output": "b"}]')
    for dataset in (["identity"], ["mine.json"], [str(data / "mine.json")]):
        _, _, problems = training.preview(_values(dataset=dataset))
        assert problems == "", (dataset, problems)


@pytest.mark.parametrize("changes, eval_dataset, words", [
    ({"trust_remote_code": True}, "", ["trust_remote_code", "--allow-remote-code"]),
    ({"dataset": ["/etc/passwd"]}, "", ["`dataset`", "outside", "only from the CLI"]),
    ({}, "/etc/passwd", ["`evaluation dataset`", "outside", "only from the CLI"]),
])
def test_comparison_queue_is_refused_what_a_run_is(saves, data, monkeypatch, changes,
                                                   eval_dataset, words):
    """The Train tab's "Start comparison" starts runs too: the page could send what the
    greyed-out widget does not offer, and the queue must refuse it like Start does."""
    from webui.tabs.train import compare as compare_panel

    monkeypatch.setattr(guard.POLICY, "allow_remote_code", False)
    message, job = compare_panel.start(_values(**changes), ["lora", "ia3"], eval_dataset, 5)
    if job is not None:  # a regression must not leave a queue training behind the test
        from core.jobs import runner

        runner.abort(Path(job), timeout=10)
    assert job is None, message
    for w in words:
        assert w in message
    assert not any(saves.rglob("sweep.yaml"))  # no queue was made, nothing was started


def test_share_link_needs_a_login_even_on_loopback(monkeypatch):
    """launch(share=True) publishes the app on gradio.live: as open as --host 0.0.0.0."""
    import gradio as gr

    from webui import app

    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: pytest.fail("it served"))
    with pytest.raises(guard.AccessError, match="refusing to serve on a public share link"):
        app.launch(host="127.0.0.1", share=True)


# -- other web pages: Host and Origin (webui.trust) ---------------------------------------
def _answer(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            data: bytes | None = None, opener: urllib.request.OpenerDirector | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_other_pages_and_rebound_names_cannot_drive_a_studio_on_loopback(tmp_path):
    """DNS rebinding (a name of the attacker's pointing at 127.0.0.1) and cross-site
    requests, as a page would send them, to a studio with no login."""
    with serve_app(tmp_path) as app:
        port = app.url.rstrip("/").rsplit(":", 1)[1]
        join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x"}).encode()
        as_json = {"Content-Type": "application/json"}
        rebound = {"Host": f"rebind.attacker.example:{port}",
                   "Origin": f"http://rebind.attacker.example:{port}"}
        status, _, body = _answer(app.url + "config", headers=rebound)
        assert status == 403 and b"--allowed-host" in body
        assert _answer(app.url + "gradio_api/queue/join", "POST", {**rebound, **as_json},
                       join)[0] == 403
        evil = {"Origin": "https://evil.example"}
        assert _answer(app.url + "gradio_api/queue/join", "POST", {**evil, **as_json},
                       join)[0] == 403
        # Gradio answers preflights itself (its CORS middleware is outside ours); it grants
        # this origin nothing, and the request that would follow is refused above.
        _, headers, _ = _answer(app.url + "gradio_api/queue/join", "OPTIONS", {
            **evil, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
        form = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.json\"" \
               b"\r\n\r\n[]\r\n--b--\r\n"
        upload = {**evil, "Content-Type": "multipart/form-data; boundary=b"}
        assert _answer(app.url + "gradio_api/upload", "POST", upload, form)[0] == 403
        assert _answer(app.url + "config", headers={"Origin": "null"})[0] == 403
        # What the studio's own pages and local scripts send is answered.
        own = {"Origin": f"http://127.0.0.1:{port}"}
        assert _answer(app.url + "config", headers=own)[0] == 200
        assert _answer(app.url + "config", headers={"Host": f"localhost:{port}"})[0] == 200
        assert _answer(app.url + "gradio_api/queue/join", "POST", {**own, **as_json},
                       join)[0] != 403
    assert not (app.saves / "presets").exists()


def test_logins_are_slowed_and_the_cookie_stays_on_the_site(tmp_path):
    with serve_app(tmp_path, env={guard.AUTH_ENV: "alice:s3cret-pw"}) as app:
        login = app.url + "login"
        wrong = urllib.parse.urlencode({"username": "alice", "password": "nope"}).encode()
        right = urllib.parse.urlencode({"username": "alice", "password": "s3cret-pw"}).encode()
        for _ in range(3):
            assert _answer(login, "POST", data=wrong)[0] == 400
        status, headers, body = _answer(login, "POST", data=right)
        assert status == 429 and b"too many failed logins" in body
        assert int(headers["retry-after"]) >= 1
        time.sleep(int(headers["retry-after"]))
        jar = http.cookiejar.CookieJar()
        user = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        status, headers, _ = _answer(login, "POST", data=right, opener=user)
        assert status == 200
        cookies = [v for k, v in headers.items() if k.lower() == "set-cookie"]
        assert cookies and all("samesite=none" not in c.lower() for c in cookies)
        assert _answer(app.url + "config", opener=user)[0] == 200
        # The login page tells a visitor nothing of the API, its runs or its datasets.
        status, _, page = _answer(app.url)
        assert status == 200 and b"window.gradio_api_info = null;" in page
        assert b"sentiment" not in page and b"api_name" not in page
        assert b"sentiment" in _answer(app.url, opener=user)[2]
        # The user's own session, ridden by another page: refused.
        assert _answer(app.url + "config", headers={"Origin": "https://evil.example"},
                       opener=user)[0] == 403
    log = (tmp_path / "server.log").read_text()
    assert log.count("login failed from 127.0.0.1") == 3


def test_allowed_hosts_and_origins(monkeypatch):
    from webui.trust import Trust

    trust = Trust("studio.lan", ("gpu-box",), ("https://proxy.example:8443",))
    for header in ("127.0.0.1:7860", "localhost", "[::1]:7860", "10.0.0.5:7860",
                   "studio.lan:7860", "GPU-BOX:80"):
        assert trust.host_allowed(header), header
    for header in ("", "evil.example", "studio.lan.evil.example", "gpu-box:x", "[::1"):
        assert not trust.host_allowed(header), header
    assert not Trust("0.0.0.0").host_allowed("0.0.0.0.evil.example")
    assert trust.origin_allowed("http://studio.lan:7860", "studio.lan:7860")
    assert trust.origin_allowed("https://proxy.example:8443/", "127.0.0.1:7860")
    assert not trust.origin_allowed("https://proxy.example", "127.0.0.1:7860")
    assert not trust.origin_allowed("null", "127.0.0.1:7860")
