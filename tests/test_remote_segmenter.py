"""`serve-segmenter` and the `remote` backend: masks round-trip bit-exactly, limits and tokens hold.

The server runs for real (uvicorn on 127.0.0.1, a free port) in front of the real MedSAM3-Lite
backend or a tiny random-weight SAM 3; the client is the `remote` backend over httpx.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sam3_tiny import tiny_model, tiny_processor
from service_helpers import disc_image, serve_segmenter_cli

from segmenter import Box, Point, Prompt, Segmenter, build_backend
from segmenter.rle import Rle, decode, encode
from segmenter.sam3 import PostProcess, Sam3Backend
from segmenter.service.app import create_app, fit_prompt, serve_in_background
from segmenter.service.client import RemoteBackend, RemoteError, encode_png
from segmenter.service.limits import ServiceLimits

TOKEN = "s3cret-token-for-the-tests"
PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return disc_image()


@pytest.fixture(scope="module")
def lite(segmenter):
    return segmenter.backend  # the session's loaded MedSAM3-Lite (conftest)


@pytest.fixture(scope="module")
def server(lite):
    with serve_in_background(create_app(lite, token=TOKEN, limits=ServiceLimits(max_upload_mb=1.0))) as url:
        yield url


def direct(backend, image, prompts):
    """The server-side backend's own answers, for comparison with what travelled."""
    h, w = image.shape[:2]
    backend.set_image(image)
    return [backend.segment(fit_prompt(p, w, h)) for p in prompts]


def assert_same(remote, local):
    assert len(remote) == len(local)
    for r, lo in zip(remote, local, strict=True):
        assert r.prompt == lo.prompt and r.image_size == lo.image_size and r.backend == lo.backend
        assert r.presence == lo.presence and r.refine == lo.refine
        assert len(r.instances) == len(lo.instances)
        for a, b in zip(r.instances, lo.instances, strict=True):
            assert a.mask.dtype == bool and a.mask.shape == b.mask.shape
            assert np.array_equal(a.mask, b.mask)
            assert (a.score, a.box, a.area) == (b.score, b.box, b.area)


def test_rle_round_trip_is_exact():
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) > 0.5, np.zeros((5, 7), bool), np.ones((9, 4), bool), (rng.random((1, 80)) > 0.3),
             (rng.random((64, 64)) > 0.9)[::2, 1::3]]  # a non-contiguous view
    for mask in masks:
        rle = Rle.of(mask)
        assert isinstance(rle.counts, str) and tuple(rle.size) == mask.shape
        assert rle.model_dump(mode="json") == encode(mask)
        back = decode(Rle.model_validate_json(rle.model_dump_json()))
        assert back.dtype == bool and np.array_equal(back, mask)


def test_remote_masks_equal_the_servers_bit_for_bit(server, lite, image):
    prompts = [
        Prompt(boxes=[Box(x0=60, y0=40, x1=160, y1=140)]),
        Prompt(points=[Point(x=110, y=90)]),
        Prompt(concept="polyp"),
        Prompt(concept="skin lesion", boxes=[Box(x0=60, y0=40, x1=400, y1=140)]),  # clipped to the image
    ]
    seg = Segmenter("remote", url=server, token=TOKEN)
    saved, lite.presence_threshold = lite.presence_threshold, 0.0  # gate open: "polyp" is drawn (and boxed) on the disc
    try:
        remote = [seg.segment(image, prompt=prompts[0])] + [seg.segment(prompt=p) for p in prompts[1:]]
        local = direct(lite, image, prompts)
    finally:
        lite.presence_threshold = saved
    assert_same(remote, local)
    assert remote[0].found and remote[1].found  # a box and a click on the disc find something
    assert remote[3].prompt.boxes[0].x1 == image.shape[1]
    assert remote[2].refine == "box" and remote[3].refine == "none"  # how the server drew them travels too
    assert seg.backend.encode_count == 1  # uploaded once for all prompts
    seg.set_image(image.copy())
    seg.segment(concept="polyp")
    assert seg.backend.encode_count == 1  # same pixels: no second upload


def test_info_health_and_concepts(server, lite):
    health = httpx.get(f"{server}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}  # no token needed, no details given
    remote = RemoteBackend(server, token=TOKEN)
    info = remote.info()
    assert info["backend"] == "remote:medsam3-lite" and info["device"] == "cpu" and info["url"] == server
    assert remote.concepts() == lite.concepts() and "polyp" in remote.concepts()
    raw = httpx.get(f"{server}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert raw["backend"] == "medsam3-lite" and raw["max_upload_mb"] == 1.0 and raw["api_version"] == 1


def test_wrong_or_missing_token_is_refused(server, image):
    with pytest.raises(RemoteError, match="refused the token"):
        RemoteBackend(server, token="wrong")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.post(f"{server}/v1/images", content=encode_png(image), headers={**headers, **PNG})
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"


def test_oversized_upload_is_refused(server):
    noise = (np.random.default_rng(2).random((700, 700, 3)) * 255).astype(np.uint8)  # ~1.4 MB as PNG
    assert len(encode_png(noise)) > 1024 * 1024
    remote = RemoteBackend(server, token=TOKEN)
    with pytest.raises(RemoteError, match="too large"):
        remote.set_image(noise)
    auth = {"Authorization": f"Bearer {TOKEN}", **PNG}

    def chunks():  # no Content-Length: the server counts while it reads
        for _ in range(20):
            yield b"\0" * 100_000

    response = httpx.post(f"{server}/v1/images", content=chunks(), headers=auth)
    assert response.status_code == 413 and "limit of 1 MB" in response.json()["detail"]


def test_bad_uploads_and_prompts_get_clear_errors(server, image):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(f"{server}/v1/images", content=b"this is not an image", headers={**auth, **PNG})
    assert response.status_code == 400 and "not a readable image" in response.json()["detail"]
    response = httpx.post(f"{server}/v1/images/0123456789abcdef/segment", json={"prompts": [{"concept": "polyp"}]},
                          headers=auth)
    assert response.status_code == 404 and "upload the image first" in response.json()["detail"]
    remote = RemoteBackend(server, token=TOKEN)
    remote.set_image(image)
    with pytest.raises(ValueError, match="lies outside the 240x180 image"):
        remote.segment(Prompt(points=[Point(x=500, y=10)]))
    response = httpx.post(f"{server}/v1/images/{remote._image_id}/segment", json={"prompts": [{}]}, headers=auth)
    assert response.status_code == 422 and "a prompt needs a concept" in response.text


def test_dropped_images_are_uploaded_again(lite, image):
    store = ServiceLimits(max_store_mb=1.5 * image.nbytes / 2**20)  # room for one image, not two
    with serve_in_background(create_app(lite, limits=store)) as url:
        first, second = RemoteBackend(url), RemoteBackend(url)
        first.set_image(image)
        second.set_image(np.ascontiguousarray(image[:, ::-1]))  # evicts the first image on the server
        result = first.segment(Prompt(boxes=[Box(x0=60, y0=40, x1=160, y1=140)]))
        assert result.found and first.encode_count == 2  # re-uploaded once, then answered


def test_unreachable_server_and_missing_url(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(RemoteError, match="unreachable"):
        RemoteBackend(f"http://127.0.0.1:{port}", timeout=5)
    monkeypatch.delenv("MEDSAM3_SEGMENTER_URL", raising=False)
    with pytest.raises(ValueError, match="MEDSAM3_SEGMENTER_URL"):
        build_backend("remote")


def test_sam3_backend_served_in_batches(image):
    backend = Sam3Backend(net=tiny_model(), processor=tiny_processor(),
                          postprocess=PostProcess(score_threshold=0.0, nms_iou=0.7))
    prompts = [Prompt(concept="polyp"), Prompt(concept="lung", boxes=[Box(x0=10, y0=10, x1=200, y1=170)]),
               Prompt(boxes=[Box(x0=60, y0=40, x1=160, y1=140)])]
    with serve_in_background(create_app(backend)) as url:
        remote = RemoteBackend(url)
        assert remote.info()["backend"] == "remote:sam3" and remote.info()["dtype"] == "float32"
        remote.set_image(image)
        answers = remote.segment_many(prompts)
    assert any(a.found for a in answers)
    backend.set_image(image)
    assert_same(answers, backend.segment_many(prompts))
    assert backend.encode_count == 1


def test_serve_segmenter_command():
    """The CLI as a user starts it: free port, token from the environment, health and info answer."""
    with serve_segmenter_cli("--max-upload-mb", "2", env={"MEDSAM3_SEGMENTER_TOKEN": TOKEN}) as (_, url):
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/v1/info").status_code == 401
        info = httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert info["backend"] == "medsam3-lite" and info["max_upload_mb"] == 2.0 and info["max_megapixels"] == 16


def test_agent_runs_end_to_end_with_the_remote_segmenter(server, lite, image, tmp_path, monkeypatch):
    """`medsam3-agent run ... --segmenter remote` against a local server, and the same answer as in-process."""
    import json

    from PIL import Image

    from agent import Agent
    from agent.cli import main as cli

    path = tmp_path / "frame.png"
    Image.fromarray(image).save(path)
    monkeypatch.setenv("MEDSAM3_SEGMENTER_URL", server)
    monkeypatch.setenv("MEDSAM3_SEGMENTER_TOKEN", TOKEN)
    out = tmp_path / "out"
    assert cli(["run", str(path), "find the polyps", "--out", str(out), "--planner", "offline", "--quiet",
                "--segmenter", "remote"]) == 0
    saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert saved["planner"] == "offline" and saved["concepts_tried"][0] == "polyp"

    remote = Agent(planner="offline", segmenter="remote").run("find the polyps", image=str(path))
    local = Agent(planner="offline", segmenter=Segmenter(lite)).run("find the polyps", image=str(path))
    assert remote.answer == local.answer == saved["answer"]
    assert remote.concepts_tried == local.concepts_tried
    assert np.array_equal(remote.union_mask(), local.union_mask())
    assert [len(m.instances) for m in remote.masks] == [len(m.instances) for m in local.masks]
