"""Who may use the UI: a login where it is needed, no bind beyond loopback without one, no Python errors shown,
and no answer to a web page that points its own domain at a loopback UI (DNS rebinding).

Refusals of a non-loopback bind use an address from the documentation range (192.0.2.0/24), which
no machine here owns: the refusal comes before any bind, and every server here listens on 127.0.0.1.
"""

from __future__ import annotations

import json

import httpx
import pytest
from ui_helpers import ASK_SETTINGS, call_raw, client, free_port, serve_ui

from agent.cli import main as cli
from agent.ui.auth import AUTH_ENV, check_exposure, load_credentials

gradio_client = pytest.importorskip("gradio_client")

USER, PASSWORD = "clinician", "a-long-test-password-9c1e"
PROBE = "<script>probe-7f3a</script>"


@pytest.fixture(autouse=True)
def no_login_in_env(monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)


def test_a_non_loopback_host_without_a_login_is_refused_before_anything_binds(tmp_path, capsys):
    code = cli(["ui", "--host", "192.0.2.1", "--port", str(free_port()), "--no-preload"])
    assert code == 2
    err = capsys.readouterr().err
    assert "refusing to serve the UI on 192.0.2.1 without authentication" in err and "--insecure" in err

    from agent.ui.app import UiConfig, launch_app

    with pytest.raises(ValueError, match="without authentication"):  # the library call refuses too
        launch_app(UiConfig(host="192.0.2.1", port=free_port(), workdir=tmp_path), block=False)
    assert list(tmp_path.iterdir()) == []  # refused before the run's folder was made
    check_exposure("192.0.2.1", has_auth=True, insecure=False)  # with a login,
    check_exposure("192.0.2.1", has_auth=False, insecure=True)  # or said explicitly,
    check_exposure("::1", has_auth=False, insecure=False)  # or loopback: allowed
    check_exposure("localhost", has_auth=False, insecure=False)


def test_logins_come_from_the_flag_the_environment_or_a_file_and_bad_ones_are_not_echoed(tmp_path):
    file = tmp_path / "logins"
    file.write_text(f"# who may log in\n{USER}:{PASSWORD}\n\nsecond:pa:ss\n", encoding="utf-8")
    pairs = load_credentials(["flag:pw"], file, env={AUTH_ENV: "env-user:env-pw"})
    assert pairs == [("flag", "pw"), ("env-user", "env-pw"), (USER, PASSWORD), ("second", "pa:ss")]
    for bad in ("no-colon-secret", ":only-a-password", "user:"):
        with pytest.raises(ValueError, match="USER:PASS") as info:
            load_credentials([bad])
        assert bad not in str(info.value)
    with pytest.raises(ValueError, match="cannot read it"):
        load_credentials(file=tmp_path / "missing")

    from agent.cli import build_parser
    from agent.ui import config_from_args

    config = config_from_args(build_parser().parse_args(["ui", "--auth-file", str(file)]))
    assert (USER, PASSWORD) in config.auth and PASSWORD not in repr(config)
    assert config.debug is False and config.insecure is False


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with serve_ui(workdir=tmp_path_factory.mktemp("ui_auth"), auth=[(USER, PASSWORD)]) as ui:
        yield ui


def test_with_a_login_every_api_call_without_it_is_refused(guarded):
    url = guarded.url
    assert httpx.post(url + "gradio_api/call/ask", json={"data": []}, timeout=120).status_code == 401
    assert httpx.post(url + "gradio_api/upload", files={"files": ("a.png", b"x", "image/png")},
                      timeout=120).status_code == 401
    assert httpx.post(url + "gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"},
                      timeout=120).status_code == 401
    with pytest.raises(Exception):  # noqa: B017  (gradio_client's error type varies by version)
        client(url)
    with pytest.raises(Exception):  # noqa: B017
        client(url, auth=(USER, "wrong-password"))
    assert client(url, auth=(USER, PASSWORD)).predict(api_name="/new_chat")[0] == []


def _error_for_a_bad_slider(url: str) -> str:
    settings = list(ASK_SETTINGS)
    settings[4] = PROBE  # the round limit: a slider gets a string
    event, data = call_raw(url, "ask", [{"text": "find the polyps", "files": []}, *settings])
    assert event == "error"
    return json.dumps(data)


def test_python_errors_are_shown_to_users_only_with_debug(tmp_path):
    with serve_ui(workdir=tmp_path) as ui:
        hidden = _error_for_a_bad_slider(ui.url)
    assert PROBE not in hidden and "Traceback" not in hidden
    with serve_ui(workdir=tmp_path, debug=True) as ui:  # the control: the same probe with --debug
        assert PROBE in _error_for_a_bad_slider(ui.url)


def test_a_loopback_ui_without_a_login_answers_only_to_loopback_host_names(tmp_path):
    with serve_ui(workdir=tmp_path) as ui:  # what a page's script reaches after pointing its domain at 127.0.0.1
        port = ui.url.rstrip("/").rsplit(":", 1)[1]
        rebound = {"Host": f"rebind.example:{port}"}
        assert httpx.get(ui.url, headers=rebound, timeout=120).status_code == 400
        assert httpx.post(ui.url + "gradio_api/call/new_chat", json={"data": []}, headers=rebound,
                          timeout=120).status_code == 400
        for name in ("127.0.0.1", "localhost", "[::1]"):
            assert httpx.get(ui.url, headers={"Host": f"{name}:{port}"}, timeout=120).status_code == 200
