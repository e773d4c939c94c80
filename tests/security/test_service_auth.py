"""serve-segmenter authentication: no tokenless server beyond loopback, tokens never in argv, and a
tokenless loopback server that a web page in the user's browser cannot reach (Host header check).

Refusals are checked on addresses from the documentation ranges (192.0.2.0/24, 2001:db8::/32), which
no machine here owns: the refusal happens before any bind, and no traffic leaves 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import disc_image, http, serve_segmenter_cli

from agent.cli import main as cli
from segmenter.service.app import create_app, serve_in_background
from segmenter.service.client import encode_png

TOKEN = "a-token-of-the-right-length-4f2a"
PNG = {"Content-Type": "image/png"}


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch):
    monkeypatch.delenv("MEDSAM3_SEGMENTER_TOKEN", raising=False)


@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::1"])
def test_non_loopback_bind_without_token_is_refused(host, capsys):
    assert cli(["serve-segmenter", "--host", host, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to serve on {host} without a token" in err
    assert "MEDSAM3_SEGMENTER_TOKEN" in err and "--token-file" in err and "--insecure" in err


def test_insecure_gets_past_the_refusal(monkeypatch, segmenter, capsys):
    """--insecure is the explicit way out: the command goes on to bind (which fails here: not our address)."""
    monkeypatch.setattr("segmenter.service.command.build", lambda args: segmenter.backend)  # the session's loaded model
    assert cli(["serve-segmenter", "--host", "192.0.2.1", "--port", "0", "--insecure"]) == 2
    captured = capsys.readouterr()
    assert "cannot listen on 192.0.2.1" in captured.err and "refusing" not in captured.err
    assert "without a token (--insecure)" in captured.out


def test_token_on_the_command_line_is_refused(capsys):
    assert cli(["serve-segmenter", "--host", "192.0.2.1", "--port", "0", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "--token is not accepted" in err and "MEDSAM3_SEGMENTER_TOKEN" in err and "--token-file" in err
    assert TOKEN not in err


def test_bad_token_files_are_refused(tmp_path, capsys):
    short = tmp_path / "short"
    short.write_text("abc\n", encoding="utf-8")
    assert cli(["serve-segmenter", "--host", "192.0.2.1", "--port", "0", "--token-file", str(short)]) == 2
    assert "at least 16 printable characters" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert cli(["serve-segmenter", "--host", "192.0.2.1", "--port", "0", "--token-file", str(missing)]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_token_file_server_checks_the_token_and_keeps_it_out_of_argv(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    with serve_segmenter_cli("--token-file", str(token_file)) as (proc, url):
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert str(token_file) in cmdline and TOKEN not in cmdline
        assert http.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
            response = http.get(f"{url}/v1/info", headers=headers)
            assert response.status_code == 401 and TOKEN not in response.text
        upload = http.post(f"{url}/v1/images", content=encode_png(disc_image()), headers=PNG)
        assert upload.status_code == 401


@pytest.fixture(scope="module")
def tokenless(segmenter):
    with serve_in_background(create_app(segmenter.backend)) as url:
        yield url


def test_tokenless_server_answers_only_to_loopback_host_names(tokenless):
    port = tokenless.rsplit(":", 1)[1]
    for host in ["evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "localhost:1",
                 f"localhost.:{port}", f"[::2]:{port}", ""]:
        response = http.get(f"{tokenless}/v1/info", headers={"Host": host})
        assert response.status_code == 400, host
        assert "Host header not accepted" in response.json()["detail"] and "evil" not in response.text
    upload = http.post(f"{tokenless}/v1/images", content=encode_png(disc_image()),
                        headers={"Host": "evil.example", **PNG})
    assert upload.status_code == 400  # a rebound page cannot post images either
    for host in ["127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"]:
        assert http.get(f"{tokenless}/v1/info", headers={"Host": host}).status_code == 200, host


def test_token_server_accepts_any_host_name(segmenter):
    """Behind a reverse proxy the Host is the public name; the token is what keeps strangers out."""
    with serve_in_background(create_app(segmenter.backend, token=TOKEN)) as url:
        response = http.get(f"{url}/v1/info", headers={"Host": "segmenter.example", "Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert http.get(f"{url}/v1/info", headers={"Host": "segmenter.example"}).status_code == 401
