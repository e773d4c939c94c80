"""Hostile or malformed requests to the real service (MedSAM3-Lite on 127.0.0.1): each is refused with
a short message before it costs memory or reaches the model, and nothing of the request is echoed."""

from __future__ import annotations

import json

import httpx
import pytest
from service_helpers import disc_image, http

from segmenter.service.app import create_app, serve_in_background
from segmenter.service.client import encode_png

JSON = {"Content-Type": "application/json"}
SHORT = 400  # bytes: every refusal fits in a line


@pytest.fixture(scope="module")
def server(segmenter):
    with serve_in_background(create_app(segmenter.backend)) as url:
        yield url


@pytest.fixture(scope="module")
def segment_url(server):
    upload = http.post(f"{server}/v1/images", content=encode_png(disc_image()), headers={"Content-Type": "image/png"})
    assert upload.status_code == 200
    return f"{server}/v1/images/{upload.json()['image_id']}/segment"


def refused(response: httpx.Response, status: int, words: str) -> str:
    assert response.status_code == status, response.text[:300]
    assert len(response.content) < SHORT, len(response.content)
    detail = response.json()["detail"]
    assert words in detail, detail
    return detail


def test_wrong_content_types_get_415(server, segment_url):
    png = encode_png(disc_image())
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "multipart/form-data; boundary=x"},
                    {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "image"}):
        refused(http.post(f"{server}/v1/images", content=png, headers=headers), 415, "Content-Type must be")
    for content_type in ("application/octet-stream", "image/png", "image/x-anything"):
        assert http.post(f"{server}/v1/images", content=png, headers={"Content-Type": content_type}).status_code == 200
    body = json.dumps({"prompts": [{"boxes": [{"x0": 60, "y0": 40, "x1": 160, "y1": 140}]}]})
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        refused(http.post(segment_url, content=body, headers=headers), 415, "application/json")
    ok = http.post(segment_url, content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200 and ok.json()["results"][0]["instances"]


def test_bodies_above_the_limit_get_413_before_they_are_read(server, segment_url):
    padding = json.dumps({"prompts": [{"concept": "polyp"}], "pad": "x" * 1_200_000})
    refused(http.post(segment_url, content=padding, headers=JSON), 413, "limit of 1024 kB")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 100_000

    refused(http.post(segment_url, content=chunks(), headers=JSON), 413, "limit of 1024 kB")
    refused(http.request("GET", f"{server}/v1/info", content=b"x" * 10), 413, "takes no body")


def test_two_hundred_thousand_points_are_refused_and_not_echoed(segment_url):
    points = [{"x": 5, "y": 5}] * 200_000
    detail = refused(http.post(segment_url, json={"prompts": [{"points": points}]}), 413, "limit")
    assert '"x"' not in detail


@pytest.mark.parametrize("field, item", [("points", {"x": 5, "y": 5}),
                                         ("boxes", {"x0": 1, "y0": 1, "x1": 20, "y1": 20})])
def test_more_than_64_points_or_boxes_get_422(segment_url, field, item):
    detail = refused(http.post(segment_url, json={"prompts": [{field: [item] * 65}]}), 422, "at most 64")
    assert field in detail
    refused(http.post(segment_url, json={"prompts": [{"concept": "polyp"}] * 65}), 422, "at most 64")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinite_coordinates_get_422(segment_url, value):
    box = f'{{"prompts": [{{"boxes": [{{"x0": {value}, "y0": 0, "x1": 100, "y1": 100}}]}}]}}'
    refused(http.post(segment_url, content=box, headers=JSON), 422, "finite number")
    point = f'{{"prompts": [{{"points": [{{"x": 10, "y": {value}}}]}}]}}'
    refused(http.post(segment_url, content=point, headers=JSON), 422, "finite number")


def test_lone_surrogate_in_a_concept_gets_422(segment_url):
    body = '{"prompts": [{"concept": "\\ud800 polyp"}]}'  # valid JSON, not valid Unicode text
    detail = refused(http.post(segment_url, content=body, headers=JSON), 422, "concept")
    assert "\ud800" not in detail


def test_a_100_kb_concept_is_refused_in_a_line(segment_url):
    refused(http.post(segment_url, json={"prompts": [{"concept": "polyp " * 17_000}]}), 422, "at most 200 characters")


def test_unknown_ids_and_broken_json_are_not_echoed(server, segment_url):
    long_id = "f" * 5000
    detail = refused(http.post(f"{server}/v1/images/{long_id}/segment", json={"prompts": [{"concept": "polyp"}]}),
                     404, "upload the image first")
    assert long_id[:50] not in detail
    refused(http.post(segment_url, content=b'{"prompts": [' + b"1," * 100_000, headers=JSON), 422, "JSON")
    refused(http.post(segment_url, json={"prompts": [{"concept": "polyp", "points": "x" * 50_000}]}), 422, "points")


def test_unreadable_upload_names_no_python_object(server):
    for body in (b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 64):
        detail = refused(http.post(f"{server}/v1/images", content=body, headers={"Content-Type": "image/png"}),
                         400, "not a readable image")
        assert "0x" not in detail and "<" not in detail and "BytesIO" not in detail
