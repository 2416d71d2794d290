"""The model service as users meet it: `python -m mura_lightning.serve` in a real process on a loopback port (started
once for the module, with API keys), a real HTTP client, and the viewer page in headless Chromium. Its answers equal
predict's on the same files to 1e-5, also when many different studies arrive at once and share batches; keys,
limits and malformed requests are refused with 4xx and the service goes on; SIGTERM lets a request in flight finish
(the module's last test: it stops the server)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from helpers.browser import browser_page
from helpers.dicoms import write_dicom
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import compose, compose_run, run_predict
from helpers.servers import free_port, wait_until_answering
from PIL import Image

from mura_lightning.errors import MuraError
from mura_lightning.serve import check_serve
from mura_lightning.train import train

KEY = "test-key-0123456789"
START_S = 120
ANSWER_S = 300  # a busy machine (and nice -n 19) can make one answer take minutes
MIXED_STUDY = "valid/XR_WRIST/patient09999/study1_negative"  # added to predict's input after training
LIMITS = {  # small, so each limit is cheap to reach
    "serve.limits.max_images": 4,
    "serve.limits.max_body_bytes": 400_000,
    "serve.limits.max_pixels": 250_000,
    "serve.limits.body_timeout_s": 2,
    "serve.limits.keep_alive_s": 1,
    "serve.batching.max_wait_ms": 50,
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A tiny trained checkpoint, predict's answers for its valid studies (with CAMs), and the service of that
    checkpoint running on a free loopback port with one API key; the server is stopped at the end."""
    tmp = tmp_path_factory.mktemp("serve")
    root = write_tree(tmp, standard_studies())
    ckpt = train(compose_run(root, tmp, "callbacks.cam=null"))["ckpt_path"]
    write_mixed_study(root / MIXED_STUDY)
    (tmp / "keys.txt").write_text(f"# service keys\n{KEY}\n")
    port = free_port()
    log_path = tmp / "server.log"
    command = [
        sys.executable,
        "-m",
        "mura_lightning.serve",
        f"ckpt_path={ckpt}",
        f"serve.port={port}",
        f"serve.api_keys_file={tmp / 'keys.txt'}",
        *(f"{key}={value}" for key, value in LIMITS.items()),
    ]
    with log_path.open("w") as log_file:
        server = subprocess.Popen(command, cwd=tmp, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        table = run_predict(tmp / "predicted", ckpt, root / "valid", "cam=true")
        wait_until_answering(f"{url}/readyz", server, log_path, START_S)
        yield SimpleNamespace(
            url=url,
            ckpt=Path(ckpt),
            root=root,
            server=server,
            log=log_path,
            table=table,
            cams=tmp / "predicted" / "cams",
        )
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)


def write_mixed_study(folder: Path) -> None:
    """A study of the same radiograph as a 16-bit PNG, a palette PNG and a DICOM naming its body part."""
    gray = np.random.default_rng(1).integers(0, 256, size=(24, 20), dtype=np.uint8)
    folder.mkdir(parents=True)
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "wide.png")
    Image.fromarray(gray).convert("P").save(folder / "palette.png")
    write_dicom(folder / "view.dcm", gray, BodyPartExamined="WRIST")


def studies_of(table) -> dict[str, tuple[list[Path], float, dict[str, float]]]:
    """predict's studies: each study's image files, its probability and its images' probabilities by file name."""
    images, studies = table[table["level"] == "image"], table[table["level"] == "study"].set_index("path")
    result = {}
    for study, rows in images.groupby("study"):
        files = [Path(name) for name in rows["path"]]
        result[study] = (files, float(studies.loc[study, "prob"]), dict(zip(rows["path"], rows["prob"], strict=True)))
    return result


def upload(files: list[tuple[str, bytes]], **fields: str) -> dict:
    """httpx's multipart arguments for a study's files (field `files` repeated) and extra fields."""
    return {"files": [("files", (name, data, "application/octet-stream")) for name, data in files], "data": fields}


def study_files(service, paths: list[Path]) -> list[tuple[str, bytes]]:
    """A study's files as (name, bytes), named by their path under the tree."""
    return [(str(path), (service.root / path).read_bytes()) for path in paths]


def png_bytes(pixels: np.ndarray, **options) -> bytes:
    """An array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def headers() -> dict[str, str]:
    return {"X-API-Key": KEY}


def test_many_concurrent_studies_get_predicts_probabilities_and_share_batches(service):
    expected = studies_of(service.table)
    order = [study for study in expected for _ in range(3)]
    random.Random(0).shuffle(order)

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.url, headers=headers(), timeout=ANSWER_S) as client:
            requests = [
                client.post("/v1/studies", **upload(study_files(service, expected[study][0]))) for study in order
            ]
            return await asyncio.gather(*requests)

    batches_before = metric(service, "mura_batch_images_count")
    answers = asyncio.run(send_all())
    batches = metric(service, "mura_batch_images_count") - batches_before
    digest = hashlib.sha256(service.ckpt.read_bytes()).hexdigest()
    for study, answer in zip(order, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        files, probability, view_probs = expected[study]
        assert body["study"]["probability"] == pytest.approx(probability, abs=1e-5), study
        assert [view["file"] for view in body["views"]] == [str(path) for path in files]
        for view in body["views"]:
            assert view["probability"] == pytest.approx(view_probs[view["file"]], abs=1e-5)
        assert sum(view["weight"] for view in body["views"]) == pytest.approx(1.0, abs=1e-5)
        assert body["study"]["threshold"] == 0.5
        assert body["study"]["decision"] == ("abnormal" if probability > 0.5 else "normal")
        assert body["model"]["checkpoint_sha256"] == [digest]
        assert body["model"]["name"] == "densenet169" and body["model"]["preprocessing"]["image_size"] == 32
    assert 1 <= batches < len(order), f"{len(order)} concurrent studies ran in {batches} batches"


def metric(service, name: str) -> float:
    """A sample's value from /metrics (the first line starting with `name`)."""
    text = httpx.get(f"{service.url}/metrics", headers=headers(), timeout=ANSWER_S).text
    return float(next(line for line in text.splitlines() if line.startswith(name)).split()[-1])


def test_cam_overlays_are_predicts(service):
    files, _, _ = next(value for value in studies_of(service.table).values() if len(value[0]) > 1)
    answer = httpx.post(
        f"{service.url}/v1/studies?cam=true", headers=headers(), timeout=ANSWER_S, **upload(study_files(service, files))
    )
    assert answer.status_code == 200, answer.text
    for path, view in zip(files, answer.json()["views"], strict=True):
        radiograph = np.asarray(Image.open(io.BytesIO(base64.b64decode(view["radiograph_png"]))))
        cam = np.asarray(Image.open(io.BytesIO(base64.b64decode(view["cam_overlay_png"]))).convert("RGB"))
        np.testing.assert_array_equal(radiograph, np.asarray(Image.open(service.root / path)))
        predicted = np.asarray(Image.open(service.cams / str(path).replace("/", "__")).convert("RGB"))
        assert cam.shape == predicted.shape == (*radiograph.shape, 3)
        assert np.abs(cam.astype(int) - predicted.astype(int)).max() <= 2


def test_keys_are_required_and_the_page_and_health_are_open(service):
    files = study_files(service, next(iter(studies_of(service.table).values()))[0])
    assert httpx.post(f"{service.url}/v1/studies", timeout=ANSWER_S, **upload(files)).status_code == 401
    wrong = httpx.post(f"{service.url}/v1/studies", headers={"X-API-Key": KEY[:-1]}, timeout=ANSWER_S, **upload(files))
    assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["error"]["message"]
    assert httpx.get(f"{service.url}/metrics", timeout=ANSWER_S).status_code == 401
    for path in ("/healthz", "/readyz", "/", "/static/viewer.js"):
        answer = httpx.get(f"{service.url}{path}", timeout=ANSWER_S)
        assert answer.status_code == 200, path
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in httpx.get(service.url, timeout=ANSWER_S).headers["content-security-policy"]


def test_a_non_loopback_address_needs_keys_and_the_default_is_loopback(service, tmp_path):
    assert compose("serve", [f"ckpt_path={service.ckpt}"]).serve.host == "127.0.0.1"
    with pytest.raises(MuraError, match=r"serve.host=0.0.0.0 would accept requests .* set serve.api_keys_file"):
        check_serve(compose("serve", [f"ckpt_path={service.ckpt}", "serve.host=0.0.0.0"]))
    with pytest.raises(MuraError, match=r"serve.api_keys_file=.*missing.txt does not exist"):
        check_serve(compose("serve", [f"ckpt_path={service.ckpt}", f"serve.api_keys_file={tmp_path}/missing.txt"]))
    (tmp_path / "keys.txt").write_text("k\n")
    check_serve(
        compose(
            "serve", [f"ckpt_path={service.ckpt}", "serve.host=0.0.0.0", f"serve.api_keys_file={tmp_path}/keys.txt"]
        )
    )


def refused(answer: httpx.Response, status: int, reason: str) -> str:
    """The message of a refusal, after checking its status and reason."""
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["reason"] == reason, answer.text
    return answer.json()["error"]["message"]


def test_limits_and_bad_files_are_refused_with_their_status(service, tmp_path):
    files, probability, _ = next(value for value in studies_of(service.table).values() if len(value[0]) == 1)
    good = study_files(service, files)

    def post(**arguments) -> httpx.Response:
        arguments["headers"] = {**headers(), **arguments.get("headers", {})}
        return httpx.post(f"{service.url}/v1/studies", timeout=ANSWER_S, **arguments)

    big = np.random.default_rng(0).integers(0, 256, size=(700, 700), dtype=np.uint8)
    refused(post(**upload([("big.png", png_bytes(big))])), 413, "body_too_large")
    refused(post(**upload(good * 5)), 413, "too_many_images")
    bomb = png_bytes(np.zeros((1000, 1000), dtype=np.uint8), optimize=True)
    assert "bomb.png has 1,000,000 pixels" in refused(post(**upload([("bomb.png", bomb)])), 422, "too_many_pixels")
    refused(post(content=b"{}", headers={"content-type": "application/json"}), 415, "wrong_content_type")
    refused(post(**upload([("notes.txt", b"not an image")])), 415, "unsupported_type")
    refused(post(files={"other": ("a.png", good[0][1])}), 422, "wrong_field")
    refused(post(**upload(good, body_part="knee")), 422, "bad_body_part")
    colour = write_dicom(tmp_path / "rgb.dcm", np.zeros((8, 8, 3), dtype=np.uint8), "RGB").read_bytes()
    frames = write_dicom(tmp_path / "cine.dcm", np.zeros((2, 8, 8), dtype=np.uint8)).read_bytes()
    assert "colour.dcm: it is a colour image" in refused(
        post(**upload([("colour.dcm", colour)])), 422, "unreadable_image"
    )
    answer = post(**upload([*good, ("colour.dcm", colour), ("cine.dcm", frames), ("empty.png", b"")]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["study"]["probability"] == pytest.approx(probability, abs=1e-5)  # the readable view alone, as predict
    assert body["study"]["views_scored"] == 1 and body["study"]["views_refused"] == 3
    errors = [view["error"] for view in body["views"][1:]]
    assert "colour.dcm: it is a colour image" in errors[0] and "cine.dcm: it has 2 frames" in errors[1]
    assert "empty.png is empty" in errors[2]
    assert "unreadable_image" in httpx.get(f"{service.url}/metrics", headers=headers(), timeout=ANSWER_S).text


def test_sixteen_bit_palette_and_dicom_uploads_score_as_predict_reads_them(service):
    files, probability, _ = studies_of(service.table)[MIXED_STUDY]
    answer = httpx.post(
        f"{service.url}/v1/studies", headers=headers(), timeout=ANSWER_S, **upload(study_files(service, files))
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["study"]["probability"] == pytest.approx(probability, abs=1e-5)
    assert answer.json()["study"]["body_part"] == "wrist"  # read from the DICOM header
    assert [view["kind"] for view in answer.json()["views"]] == ["png", "dicom", "png"]  # palette, view, wide


def deep_dicom(depth: int) -> bytes:
    """A DICOM file (explicit VR little endian) whose only element is a sequence nested `depth` levels deep."""
    syntax = b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\x00"
    meta = b"\x02\x00\x00\x00UL" + struct.pack("<HI", 4, len(syntax)) + syntax
    opening = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return b"\0" * 128 + b"DICM" + meta + opening * depth + closing * depth


def malformed_requests(service, tmp_path) -> list[tuple[str, dict]]:
    """Over 200 malformed requests, each as (what it is, httpx.request arguments), from a seeded generator."""
    rng = random.Random(23)
    files, _, _ = next(iter(studies_of(service.table).values()))
    good = study_files(service, files)
    request = httpx.Request("POST", service.url, **upload(good))
    body, content_type = request.read(), request.headers["content-type"]
    gray = np.random.default_rng(2).integers(0, 256, size=(24, 20), dtype=np.uint8)
    wide, palette = png_bytes(gray.astype(np.uint16) * 257), png_bytes(gray, bits=4)
    dicom = write_dicom(tmp_path / "ok.dcm", gray).read_bytes()
    cases: list[tuple[str, dict]] = []
    multipart = {**headers(), "content-type": content_type}
    for _ in range(40):
        cut = rng.randrange(1, len(body) - 1)
        cases.append(("truncated multipart", {"content": body[:cut], "headers": multipart}))
    for _ in range(30):
        noise = rng.randbytes(rng.randrange(0, 3000))
        cases.append(("random bytes as multipart", {"content": noise, "headers": multipart}))
        cases.append(("random bytes as a file", upload([("x.png", noise)])))
    for _ in range(20):
        cases.append(("zero-byte files", upload([("a.png", b"")] * rng.randrange(1, 5))))
    for kind, data in (("16-bit png", wide), ("palette png", palette), ("dicom", dicom)):
        for _ in range(15):
            cut = rng.randrange(8, len(data) - 20)
            cases.append((f"truncated {kind}", upload([(f"{kind}.bin", data[:cut])])))
            flipped = bytearray(data)
            for position in rng.sample(range(len(data) // 4, len(data)), 6):
                flipped[position] ^= 0xFF
            cases.append((f"corrupted {kind}", upload([(f"{kind}.bin", bytes(flipped)[: len(data) // 2])])))
    for depth in (200, 3000, 20000):
        cases.append((f"dicom sequences {depth} deep", upload([("deep.dcm", deep_dicom(depth))])))
    for size in (20_000, 70_000):
        cases.append(("huge header", {**upload(good), "headers": {**headers(), "X-Padding": "a" * size}}))
        cases.append(("huge part header", {"content": multipart_with_long_header(size), "headers": multipart}))
    cases.append(("no boundary", {"content": body, "headers": {**headers(), "content-type": "multipart/form-data"}}))
    cases.append(("no files", {"data": {"body_part": "wrist"}, "files": {"x": ("", b"", "text/plain")}}))
    cases.append(("text in files", {"content": text_files_part(), "headers": multipart_for_text()}))
    cases.append(("many fields", {"data": {f"f{i}": "v" for i in range(50)}, "files": upload(good)["files"]}))
    return cases


BOUNDARY = "fuzzboundary"


def multipart_with_long_header(size: int) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{"a" * size}.png"\r\n\r\n'
        f"xx\r\n--{BOUNDARY}--\r\n"
    ).encode()


def text_files_part() -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"\r\n\r\nhello\r\n--{BOUNDARY}--\r\n'.encode()


def multipart_for_text() -> dict[str, str]:
    return {**headers(), "content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_malformed_requests_are_refused_with_4xx_and_the_service_goes_on(service, tmp_path):
    cases = malformed_requests(service, tmp_path)
    assert len(cases) >= 200
    statuses = {}
    with httpx.Client(base_url=service.url, headers=headers(), timeout=ANSWER_S) as client:
        for what, arguments in cases:
            status = client.post("/v1/studies", **arguments).status_code
            statuses.setdefault(what, set()).add(status)
    raw = [b"GARBAGE\r\n\r\n", b"POST /v1/studies HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"\x16\x03\x01\x00\xa5"]
    for request in raw:
        statuses.setdefault("bad HTTP", set()).add(raw_status(service.url, request))
    assert {what: seen for what, seen in statuses.items() if not all(400 <= status < 500 for status in seen)} == {}
    assert service.server.poll() is None
    files, probability, _ = next(iter(studies_of(service.table).values()))
    answer = httpx.post(
        f"{service.url}/v1/studies", headers=headers(), timeout=ANSWER_S, **upload(study_files(service, files))
    )
    assert answer.status_code == 200 and answer.json()["study"]["probability"] == pytest.approx(probability, abs=1e-5)
    assert "Traceback" not in service.log.read_text()


def read_answer(connection: socket.socket) -> tuple[int, bytes]:
    """The status and body of the HTTP answer arriving on `connection` (its Content-Length bytes)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536) or b"\r\n\r\n"
    head, body = answer.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return int(head.split()[1]), body


def raw_status(url: str, request: bytes) -> int:
    """The status a raw request on its own connection is answered with (0 when the connection is closed without one)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as connection:
        connection.sendall(request)
        answer = connection.recv(4096)
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1") else 0


def test_slow_bodies_and_idle_connections_are_cut(service):
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as connection:
        head = (
            f"POST /v1/studies HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 1000\r\n\r\n"
        )
        connection.sendall(head.encode() + b"--" + BOUNDARY.encode())
        started = time.monotonic()
        status, payload = read_answer(connection)
    assert status == 408 and json.loads(payload)["error"]["reason"] == "body_timeout"
    assert time.monotonic() - started < 10
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(connection) == (200, b'{"status":"ok"}')
        started = time.monotonic()
        assert connection.recv(4096) == b""  # closed by the server once idle for serve.limits.keep_alive_s
    assert time.monotonic() - started < 5


def test_the_viewer_shows_predicts_probability_and_the_cams(service, tmp_path):
    study, (files, probability, _) = next((k, v) for k, v in studies_of(service.table).items() if len(v[0]) > 1)
    with browser_page(tmp_path, width=1100, height=800) as (page, log):
        page.goto(service.url, wait_until="load")
        page.locator("#files").set_input_files([str(service.root / path) for path in files])
        page.locator("#score").click()
        page.locator("#key-label").wait_for(state="visible", timeout=30_000)  # the page asks for the key once
        page.locator("#api-key").fill(KEY)
        page.locator("#score").click()
        shown = page.locator("#study-probability")
        shown.wait_for(state="visible", timeout=ANSWER_S * 1000)
        page.wait_for_function(
            "document.querySelectorAll('img.cam').length > 0 && [...document.images].every(i => i.complete)"
        )
        page.locator("#opacity").fill("40")
        opacity = page.eval_on_selector("img.cam", "image => image.style.opacity")
        value = float(shown.get_attribute("data-probability"))
        views = page.locator(".view-probability").count()
        checkpoint = page.locator("#checkpoint").inner_text()
        page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert value == pytest.approx(probability, abs=1e-5), study
    assert views == len(files) and opacity == "0.4"
    assert service.ckpt.name in checkpoint
    assert not log.errors and log.console_errors() == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ] * len(log.console_errors())
    assert all(request.startswith(service.url) or request.startswith("data:") for request in log.requests)
    picture = np.asarray(Image.open(tmp_path / "viewer.png").convert("L"))
    assert picture.std() > 10  # a page drawn, not a blank screenshot


def test_the_access_log_has_one_json_line_per_request(service):
    lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.startswith('{"method"')]
    assert {"method", "path", "status", "ms", "client", "images", "refusal"} <= set(lines[0])
    assert any(line["status"] == 401 and line["refusal"] == "unauthorized" for line in lines)
    assert any(line["path"] == "/v1/studies" and line["status"] == 200 and line["images"] for line in lines)


def test_sigterm_answers_the_request_in_flight_then_exits(service):
    """The module's last test: it stops the server."""
    files, probability, _ = next(iter(studies_of(service.table).values()))
    request = httpx.Request(
        "POST", f"{service.url}/v1/studies", headers=headers(), **upload(study_files(service, files))
    )
    body = request.read()
    host, port = service.url.removeprefix("http://").split(":")
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as connection:
        connection.sendall(f"POST /v1/studies HTTP/1.1\r\n{head}\r\n".encode() + body[: len(body) // 2])
        time.sleep(0.3)
        service.server.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        connection.sendall(body[len(body) // 2 :])
        status, payload = read_answer(connection)
    assert status == 200, payload
    assert json.loads(payload)["study"]["probability"] == pytest.approx(probability, abs=1e-5)
    assert service.server.wait(timeout=ANSWER_S) in (0, -signal.SIGTERM)
    log = service.log.read_text()
    assert "shutting down: requests in flight were answered" in log and "Traceback" not in log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.url}/healthz", timeout=2)


def test_the_batcher_runs_whole_studies_up_to_the_batch_size_and_returns_each_its_own():
    """MicroBatcher alone, with a model that answers each study with its first input: batches never split a study,
    never pass max_images (but for a larger study, run alone), and every request gets its own answer."""
    from mura_lightning.serving.batching import MicroBatcher, StudyResult

    batches: list[list[int]] = []

    def run(jobs):
        batches.append([len(job.inputs) for job in jobs])
        return [StudyResult(float(job.inputs[0, 0]), job.inputs[:, 0].numpy(), None, None, 0, 0, 0) for job in jobs]

    async def send(sizes: list[int]) -> list[StudyResult]:
        batcher = MicroBatcher(run, max_images=4, max_wait_s=0.05, max_queued=100)
        batcher.start()
        studies = [torch.full((size, 1), float(index)) for index, size in enumerate(sizes)]
        results = await asyncio.gather(*(batcher.score(study, cam=False) for study in studies))
        await batcher.stop()
        return results

    sizes = [1, 3, 2, 6, 1, 1, 2, 3, 4]
    results = asyncio.run(send(sizes))
    assert [result.probability for result in results] == [float(index) for index in range(len(sizes))]
    assert [len(result.view_probs) for result in results] == sizes
    assert sorted(size for batch in batches for size in batch) == sorted(sizes)
    assert all(sum(batch) <= 4 or batch == [6] for batch in batches), batches
    assert len(batches) < len(sizes)
