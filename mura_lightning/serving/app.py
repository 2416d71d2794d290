"""The FastAPI app: `POST /v1/studies` scores one study's uploaded views with the inference core (batched across
requests), `/healthz`, `/readyz`, `/metrics`, and the viewer page at `/`. Every refusal is a JSON error with its
status and a message for people; no stack trace reaches a client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.inference.explain import overlay
from mura_lightning.inference.model import InferenceModel
from mura_lightning.serving.batching import MicroBatcher, QueueFullError, StudyScorer
from mura_lightning.serving.metrics import ServiceMetrics
from mura_lightning.serving.security import KEY_HEADER, ApiKeys
from mura_lightning.serving.settings import ServeSettings
from mura_lightning.serving.uploads import Refusal, RefusedError, Upload, decode_upload, shown_name

log = logging.getLogger("mura_lightning.serve")
access_log = logging.getLogger("mura_lightning.serve.access")

STATIC = Path(__file__).resolve().parent / "static"
FILES_FIELD = "files"
MAX_FORM_FIELDS = 8  # body_part and a few more: a form of thousands of fields is refused by the parser
SECURITY_HEADERS = [  # the page loads nothing but its own files; images arrive as data: or blob: URLs
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def create_app(
    model: InferenceModel,
    settings: ServeSettings,
    *,
    model_info: dict[str, Any],
    cam_method: str = "GradCAM",
    cam_image_weight: float = 0.5,
) -> FastAPI:
    """The service for `model` (built by `python -m mura_lightning.serve`); `model_info` is what answers say about
    the model (name, checkpoints and their hashes, pooling, preprocessing, TTA)."""
    metrics = ServiceMetrics()
    keys = ApiKeys(settings.api_keys_file)
    limits = settings.limits
    batcher = MicroBatcher(
        StudyScorer(model, cam_method),
        max_images=settings.batching.max_batch_images,
        max_wait_s=settings.batching.max_wait_ms / 1000,
        max_queued=limits.max_queued_studies,
        on_batch=metrics.batch_images.observe,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s on http://%s:%d/", model_info["name"], settings.host, settings.port)
        yield
        log.info("shutting down: requests in flight were answered; stopping the model's worker")
        await batcher.stop()
        log.info("stopped")

    app = FastAPI(title="mura-lightning", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(HeaderLimit, max_bytes=limits.max_header_bytes, metrics=metrics)
    app.add_middleware(AccessLog, metrics=metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RefusedError)
    async def refused(request: Request, error: RefusedError) -> JSONResponse:
        return refusal_response(request, error.refusal, metrics)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        refusal = Refusal(500, "internal_error", "the service failed on this request; its log says why")
        return refusal_response(request, refusal, metrics)

    def require_key(request: Request) -> None:
        if not keys.accepts(request.headers.get(KEY_HEADER)):
            raise RefusedError(Refusal(401, "unauthorized", f"send a valid API key in the {KEY_HEADER} header"))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = batcher.running
        return JSONResponse({"ready": ready, "model": model_info["name"]}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_text(request: Request) -> Response:
        require_key(request)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/model")
    async def model_description(request: Request) -> dict[str, Any]:
        require_key(request)
        return {"model": model_info, "auth": keys.required}

    @app.post("/v1/studies")
    async def score_study(request: Request, cam: bool = False) -> JSONResponse:
        started = time.perf_counter()
        require_key(request)
        form = await read_form(request, settings)
        body_part = requested_body_part(form)
        uploads = study_uploads(form, limits.max_images)
        request.state.images = len(uploads)
        decode_started = time.perf_counter()
        decoded = await asyncio.to_thread(decode_all, uploads, limits.max_pixels, model)
        readable = [(i, item) for i, item in enumerate(decoded) if isinstance(item[0], Upload)]
        refusals = [(uploads[i][0], item[0]) for i, item in enumerate(decoded) if isinstance(item[0], Refusal)]
        for _, refusal in refusals:
            metrics.refusals.labels(refusal.reason).inc()
        if not readable:
            raise RefusedError(no_readable_view(refusals))
        body_part = body_part or next((u.body_part for _, (u, _) in readable if u.body_part), "")
        if model.thresholds and not body_part:
            raise RefusedError(
                Refusal(
                    422,
                    "body_part_missing",
                    f"this model has a threshold per body part: send the field body_part ({', '.join(BODY_PARTS)}), "
                    "or DICOM files whose BodyPartExamined names one",
                )
            )
        inputs = torch.stack([item[1] for _, item in readable])
        decode_s = time.perf_counter() - decode_started
        try:
            result = await batcher.score(inputs, cam)
        except QueueFullError as err:
            raise RefusedError(Refusal(503, "busy", f"the service is busy ({err}): retry in a moment")) from err
        cam_started = time.perf_counter()
        pictures = await asyncio.to_thread(cam_pictures, [u for _, (u, _) in readable], result.cams, cam_image_weight)
        threshold = model.threshold_of(body_part)
        views: list[dict[str, Any]] = []
        scored = {index: row for row, (index, _) in enumerate(readable)}
        for index, (name, _) in enumerate(uploads):
            if index in scored:
                row = scored[index]
                upload = readable[row][1][0]
                view = {
                    "file": name,
                    "kind": upload.kind,
                    "probability": float(result.view_probs[row]),
                    "weight": float(result.weights[row]),
                    "error": None,
                }
                if pictures is not None:
                    view["radiograph_png"], view["cam_overlay_png"] = pictures[row]
            else:
                refusal = decoded[index][0]
                view = {"file": name, "kind": None, "probability": None, "weight": None, "error": refusal.message}
                view["status"], view["reason"] = refusal.status, refusal.reason
            views.append(view)
        finished = time.perf_counter()
        return JSONResponse(
            {
                "study": {
                    "probability": result.probability,
                    "abnormal": result.probability > threshold,
                    "decision": "abnormal" if result.probability > threshold else "normal",
                    "threshold": threshold,
                    "body_part": body_part or None,
                    "views_scored": len(readable),
                    "views_refused": len(refusals),
                },
                "views": views,
                "model": model_info,
                "timings_ms": {
                    "decode": round(decode_s * 1000, 2),
                    "queue": round(result.queued_s * 1000, 2),
                    "model": round(result.model_s * 1000, 2),
                    "cam": round((finished - cam_started) * 1000, 2) if cam else 0.0,
                    "total": round((finished - started) * 1000, 2),
                    "batch_images": result.batch_images,
                },
            }
        )

    app.state.batcher = batcher
    return app


def refusal_response(request: Request, refusal: Refusal, metrics: ServiceMetrics) -> JSONResponse:
    """The JSON answer of a refused request (counted by reason, the reason kept for the access log)."""
    metrics.refusals.labels(refusal.reason).inc()
    request.state.refusal = refusal.reason
    headers = {"Retry-After": "1"} if refusal.status == 503 else None
    body = {"error": {"status": refusal.status, "reason": refusal.reason, "message": refusal.message}}
    return JSONResponse(body, status_code=refusal.status, headers=headers)


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, keeping every uploaded file in memory (the body is bounded already)."""

    spool_max_size = 2**62


async def read_form(request: Request, settings: ServeSettings) -> Any:
    """The request's multipart form, read in memory: 415 for another content type, 413 for a body over
    serve.limits.max_body_bytes (by its Content-Length or as it arrives), 408 for one slower than
    serve.limits.body_timeout_s, 400 for a malformed one."""
    limits = settings.limits
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        shown = content_type[:80] or "none"
        raise RefusedError(
            Refusal(415, "wrong_content_type", f"send multipart/form-data (the field files repeated), not {shown}")
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RefusedError(body_too_large(limits.max_body_bytes))
    try:
        body = await asyncio.wait_for(read_body(request, limits.max_body_bytes), limits.body_timeout_s)
    except TimeoutError:
        raise RefusedError(
            Refusal(408, "body_timeout", f"the request body did not arrive within {limits.body_timeout_s:g} s")
        ) from None

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    parser = InMemoryMultiPartParser(request.headers, chunks(), max_files=limits.max_images, max_fields=MAX_FORM_FIELDS)
    try:
        return await parser.parse()
    except MultiPartException as err:
        reason = "too_many_images" if "too many files" in str(err).lower() else "malformed_multipart"
        status = 413 if reason == "too_many_images" else 400
        message = f"{err} (serve.limits.max_images={limits.max_images})" if status == 413 else f"bad multipart: {err}"
        raise RefusedError(Refusal(status, reason, message)) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 once it grows over `max_bytes`."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RefusedError(body_too_large(max_bytes))
    return bytes(body)


def body_too_large(max_bytes: int) -> Refusal:
    """The 413 of a body over serve.limits.max_body_bytes."""
    return Refusal(413, "body_too_large", f"the request body is over serve.limits.max_body_bytes={max_bytes:,}")


def requested_body_part(form: Any) -> str:
    """The form's body_part ("" when not given), one of BODY_PARTS (422 otherwise)."""
    value = form.get("body_part")
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or value.strip().lower() not in BODY_PARTS:
        shown = value[:40] if isinstance(value, str) else "a file"
        raise RefusedError(Refusal(422, "bad_body_part", f"body_part={shown!r} is not one of {', '.join(BODY_PARTS)}"))
    return value.strip().lower()


def study_uploads(form: Any, max_images: int) -> list[tuple[str, UploadFile]]:
    """The study's files (the field `files`, repeated), each with the name it is shown by: 422 when there are
    none or a file comes in another field, 413 for more than serve.limits.max_images."""
    files = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != FILES_FIELD:
                raise RefusedError(
                    Refusal(422, "wrong_field", f"send the images in the field {FILES_FIELD!r}, not {key[:40]!r}")
                )
            files.append((shown_name(value.filename, len(files)), value))
        elif key == FILES_FIELD:
            raise RefusedError(Refusal(422, "not_a_file", f"the field {FILES_FIELD!r} must hold files, not text"))
    if not files:
        raise RefusedError(Refusal(422, "no_images", f"send the study's images in the field {FILES_FIELD!r}"))
    if len(files) > max_images:
        raise RefusedError(
            Refusal(413, "too_many_images", f"{len(files)} images, more than serve.limits.max_images={max_images}")
        )
    return files


def decode_all(
    uploads: list[tuple[str, UploadFile]], max_pixels: int, model: InferenceModel
) -> list[tuple[Upload | Refusal, torch.Tensor | None]]:
    """Each upload decoded (or refused) and, when decoded, its model input, made as predict makes it from a file
    (the model's EvalPreset: resize, then normalise)."""
    decoded = []
    for name, upload in uploads:
        upload.file.seek(0)
        item = decode_upload(upload.file.read(), name, max_pixels)
        if isinstance(item, Refusal):
            decoded.append((item, None))
        else:
            decoded.append((item, model.preset.normalize(model.preset.resize(item.gray))))
    return decoded


def no_readable_view(refusals: list[tuple[str, Refusal]]) -> Refusal:
    """The refusal of a study none of whose views could be read: their common status (415 when none was an
    image at all, else 422), each file named with its reason."""
    statuses = {refusal.status for _, refusal in refusals}
    status = statuses.pop() if len(statuses) == 1 else 422
    reasons = {refusal.reason for _, refusal in refusals}
    reason = reasons.pop() if len(reasons) == 1 else "unreadable_image"
    return Refusal(status, reason, "no view could be scored: " + "; ".join(r.message for _, r in refusals))


def png_base64(pixels: np.ndarray) -> str:
    """A uint8 array (gray or RGB) as base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def cam_pictures(uploads: list[Upload], cams: np.ndarray | None, image_weight: float) -> list[tuple[str, str]] | None:
    """For each view, its radiograph and its CAM overlay at the radiograph's own size (as predict writes it), as
    base64 PNGs; None without CAMs."""
    if cams is None:
        return None
    return [
        (png_base64(upload.gray), png_base64(overlay(upload.gray, cam, image_weight)))
        for upload, cam in zip(uploads, cams, strict=True)
    ]


class AccessLog:
    """ASGI middleware: one JSON access-log line per HTTP request (method, path, status, milliseconds, client,
    images, refusal reason), the request counted and timed in the metrics, and the security headers added."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            route = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            client = scope.get("client") or ("", 0)
            line = {
                "method": scope.get("method"),
                "path": path[:200],
                "status": status,
                "ms": round(seconds * 1000, 2),
                "client": f"{client[0]}:{client[1]}",
                "images": state.get("images"),
                "refusal": state.get("refusal"),
            }
            access_log.info(json.dumps(line))


class HeaderLimit:
    """ASGI middleware: a request whose headers together (names and values) are over `max_bytes` is refused with
    431 before any route sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = sum(len(name) + len(value) for name, value in scope.get("headers", []))
        if scope["type"] != "http" or size <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        message = f"the request's headers hold {size:,} bytes, over serve.limits.max_header_bytes={self.max_bytes:,}"
        self.metrics.refusals.labels("headers_too_large").inc()
        scope.setdefault("state", {})["refusal"] = "headers_too_large"
        body = {"error": {"status": 431, "reason": "headers_too_large", "message": message}}
        await JSONResponse(body, status_code=431)(scope, receive, send)


ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/studies")
