"""Memory budgets of the real service: pixels per image (from the header, before decoding), bytes of the
image store, and a bounded number of uploads read and decoded at once."""

from __future__ import annotations

import resource
import threading
import time

import numpy as np
from service_helpers import blank_png, disc_image, http

from segmenter.service.app import create_app, serve_in_background
from segmenter.service.client import encode_png
from segmenter.service.limits import ServiceLimits

PNG = {"Content-Type": "image/png"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def test_small_png_of_8000x8000_is_refused_from_its_header(segmenter):
    bomb = blank_png(8000, 8000)  # ~62 kB on disk; 64 MB grey, 192 MB as RGB once decoded
    assert len(bomb) < 100_000
    with serve_in_background(create_app(segmenter.backend)) as url:
        before = peak_rss_mb()
        start = time.perf_counter()
        response = http.post(f"{url}/v1/images", content=bomb, headers=PNG)
        elapsed = time.perf_counter() - start
        assert response.status_code == 413, response.text[:300]
        assert "8000x8000" in response.json()["detail"] and "above the limit of 16000000" in response.json()["detail"]
        assert elapsed < 5  # decoding 64 M pixels and converting them takes longer than refusing
        assert peak_rss_mb() - before < 60  # no 64-192 MB decode happened
        info = http.get(f"{url}/v1/info").json()
        assert info["max_megapixels"] == 16


def test_pixel_budget_is_configurable(segmenter):
    small = ServiceLimits(max_megapixels=0.01)  # 10,000 pixels
    with serve_in_background(create_app(segmenter.backend, limits=small)) as url:
        refused = http.post(f"{url}/v1/images", content=encode_png(disc_image(120, 100)), headers=PNG)
        assert refused.status_code == 413 and "above the limit of 10000" in refused.json()["detail"]
        assert http.post(f"{url}/v1/images", content=encode_png(disc_image(90, 100)), headers=PNG).status_code == 200


def test_image_store_evicts_by_bytes(segmenter):
    one = disc_image(seed=11).nbytes  # 180 x 240 x 3 = 129,600 bytes
    limits = ServiceLimits(max_store_mb=2.5 * one / 2**20)  # room for two
    app = create_app(segmenter.backend, limits=limits)
    with serve_in_background(app) as url:
        ids = []
        for seed in (11, 12, 13, 14):
            response = http.post(f"{url}/v1/images", content=encode_png(disc_image(seed=seed)), headers=PNG)
            assert response.status_code == 200
            ids.append(response.json()["image_id"])
            assert app.state.images.size_bytes <= limits.store_bytes
        assert len(app.state.images) == 2
        body = {"prompts": [{"boxes": [{"x0": 60, "y0": 40, "x1": 160, "y1": 140}]}]}
        assert http.post(f"{url}/v1/images/{ids[0]}/segment", json=body).status_code == 404  # dropped first
        assert http.post(f"{url}/v1/images/{ids[-1]}/segment", json=body).status_code == 200
        big = np.full((400, 400, 3), 90, np.uint8)  # 480 kB decoded: more than the whole store
        response = http.post(f"{url}/v1/images", content=encode_png(big), headers=PNG)
        assert response.status_code == 413 and "larger than the server's image store" in response.json()["detail"]
        assert app.state.images.size_bytes <= limits.store_bytes


def test_uploads_beyond_the_decode_slots_get_503(segmenter):
    limits = ServiceLimits(max_decodes=1, decode_wait_s=0.5)
    png = encode_png(disc_image(seed=21))
    with serve_in_background(create_app(segmenter.backend, limits=limits)) as url:
        def slow():  # holds the only slot: a slot covers reading the body, not only decoding it
            yield png[:100]
            time.sleep(3)
            yield png[100:]

        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(r=http.post(f"{url}/v1/images", content=slow(),
                                                                           headers=PNG, timeout=60)))
        thread.start()
        time.sleep(1)
        second = http.post(f"{url}/v1/images", content=encode_png(disc_image(seed=22)), headers=PNG)
        thread.join(60)
        assert second.status_code == 503 and second.headers["retry-after"] == "5"
        assert "busy" in second.json()["detail"]
        assert first["r"].status_code == 200  # the slow one still finishes
        third = http.post(f"{url}/v1/images", content=encode_png(disc_image(seed=22)), headers=PNG)
        assert third.status_code == 200  # the slot was given back
