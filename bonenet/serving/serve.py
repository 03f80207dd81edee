"""`bonenet serve`: a web page and an HTTP API for reading a study, over the same code as `predict`.

`create_app(net)` builds the FastAPI app around a loaded `BoneNet`:

- `GET /` is one static page (`bonenet/serving/static/index.html`): plain JavaScript, no build step, no CDN.
- `GET /api/health` describes the run.
- `POST /api/predict` takes one study's images (multipart field `files`) and answers with the
  schema of `predict --json`: an entry per image (its Grad-CAM overlay as a PNG data URL under
  `cam`, and the image as read under `image`), an error entry per unreadable file, and the
  study's entry last.

Whom it answers (the threat model is in docs/predict-and-serve.md): a request whose Host header is not
the bound address, localhost, 127.0.0.1 or a name given with `--allow-hosts` gets 421, so a web page
that rebinds its own DNS name to 127.0.0.1 cannot read the answers; a cross-origin request (an Origin
header naming another site) gets 403, and no CORS header is ever sent; with a token (`--token` or
`BONENET_TOKEN`) every `/api/` request needs `Authorization: Bearer TOKEN`. Binding beyond loopback
without a token is refused unless `--allow-no-token`. TLS belongs in a reverse proxy.

Uploads are read in memory (Starlette spools a part over 1 MB to an anonymous, already unlinked
temporary file, closed after the request); nothing is written anywhere, and the client's file
names are only echoed back, never used as paths. Prediction runs under one lock: TensorFlow
models are not safe to call from several threads at once, so concurrent requests queue.
"""

import base64
import dataclasses
import logging
import os
import threading
from pathlib import Path

import cv2
import numpy as np

from bonenet import __version__
from bonenet.configs import ServeConfig
from bonenet.data.decode import ImageReadError, image_format, max_pixels
from bonenet.data.read import read_gray, skip_from_error
from bonenet.inference.inputs import error_entry, predict_images
from bonenet.inference.notes import calibration_note, tta_note
from bonenet.run import provenance
from bonenet.run.model_card import CARD_FILE, NOT_FOR_CLINICAL_USE

STATIC = Path(__file__).resolve().parent / "static"
# Requests whose bodies are read and decoded at once; others wait before their bodies are read, so
# the server holds at most this many studies in memory (each at most MAX_FILES × MAX_FILE_MB, and
# every image within the pixel budget) whatever clients send.
CONCURRENT_REQUESTS = 4

log = logging.getLogger(__name__)


class RequestRejected(Exception):
    """A request the API refuses as a whole: an HTTP status and a one-line reason."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def png_data_url(image):
    """A BGR/gray uint8 image as a `data:image/png;base64,...` URL."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("could not encode the Grad-CAM overlay as PNG")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def display_name(name, number):
    """What an upload is called in answers: its base name, printable, never a path. Defaults to "file N"."""
    base = str(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:200]
    return base or f"file {number}"


def health(net, limits):
    """The `/api/health` answer: what run is served and how it decides."""
    manifest = net.manifest
    weights = manifest.weights
    return {
        "status": "ok",
        "bonenet_version": __version__,
        "format_version": manifest.format_version,
        "parts": net.parts,
        "router_labels": net.labels,
        "image_size": net.image_size,
        "recipe": manifest.recipe,
        "backbone": {"kind": weights.get("kind"), "origin": provenance.backbone_origin(weights)},
        "backbone_warning": provenance.backbone_warning(weights),
        "threshold_mode": net.threshold_mode,
        "thresholds": {part: {"threshold": t, "source": source} for part, (t, source) in net.thresholds.items()},
        "calibration": {key: calibration_note(manifest, key) for key in ["router", *net.parts]},
        "model_card": "/model-card",
        "limits": limits,
        "notice": NOT_FOR_CLINICAL_USE,
    }


def predict_uploads(net, uploads, lock, cams=True):
    """One study from uploaded files: [(client name, bytes)] → `predict --json` entries, study last.

    Raises:
        RequestRejected: 415 when a file is not an image at all, 422 when no file could be read.
    """
    names = [display_name(name, i) for i, (name, _) in enumerate(uploads, 1)]
    for name, (_, data) in zip(names, uploads, strict=True):
        if data and image_format(data) is None:
            raise RequestRejected(415, f"{name}: not a PNG, JPEG or DICOM image")
    skips, loaded = {}, []
    for number, (name, (_, data)) in enumerate(zip(names, uploads, strict=True)):
        try:
            loaded.append((number, name, read_gray(data, name)))
        except ImageReadError as exc:
            skips[number] = skip_from_error(exc, name)
    if not loaded:
        raise RequestRejected(422, "no readable image in this study: " + "; ".join(map(str, skips.values())))
    render = (lambda _name, image: {"cam": png_data_url(image)}) if cams else None
    with lock:
        entries, study = predict_images(net, [(name, gray) for _, name, gray in loaded], render)  # all read above
    for entry, (_, _, gray) in zip(entries, loaded, strict=True):
        entry["image"] = png_data_url(gray)  # the pixels as read (DICOM windowed, MONOCHROME1 inverted)
    by_number = {n: error_entry(skip) for n, skip in skips.items()} | {number: entry for (number, _, _), entry in zip(loaded, entries, strict=True)}
    return [*(by_number[n] for n in sorted(by_number)),
            {"study": "upload", "images": [e["path"] for e in entries], **study}]


def _error_response(status, message):
    """`{"error": "one line"}` with `status`: every answer but a 200."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": " ".join(str(message).split())[:500]}, status_code=status)


def _add_error_handlers(app):
    """Answers the framework's own errors in the API's one-line form."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def _http(_request, exc):  # 404, 405, and the form parser's own 400s
        return _error_response(exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc):
        return _error_response(422, "; ".join(e.get("msg", "invalid request") for e in exc.errors()))


async def _parse_form(request, max_files):
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        return await request.form(max_files=max_files + 1, max_fields=16)
    except HTTPException as exc:  # Starlette reports the multipart parser's errors as 400s
        if "Too many files" in str(exc.detail):
            raise RequestRejected(413, f"{exc.detail}; at most {max_files} files per request") from None
        raise RequestRejected(400, f"malformed multipart body ({exc.detail})") from None
    except MultiPartException as exc:
        raise RequestRejected(400, f"malformed multipart body ({exc})") from None
    except (ValueError, AssertionError) as exc:  # not multipart at all, or no boundary
        raise RequestRejected(400, f"expected multipart/form-data with image files under 'files' ({exc})") from None


async def read_study(request, max_files, max_file_mb):
    """A request's uploads as [(client name, bytes)], each read only up to the size limit.

    Raises:
        RequestRejected: 400 for a malformed body, 413 over a limit, 422 without files.
    """
    from starlette.datastructures import UploadFile

    max_bytes = int(max_file_mb * 1024 * 1024)
    form = await _parse_form(request, max_files)
    try:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise RequestRejected(422, "no files: send one study's images as multipart field 'files'")
        if len(files) > max_files:
            raise RequestRejected(413, f"{len(files)} files: at most {max_files} files per request")
        uploads = []
        for number, upload in enumerate(files, 1):
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise RequestRejected(413, f"{display_name(upload.filename, number)}: larger than {max_file_mb:g} MB")
            uploads.append((upload.filename, data))
        return uploads
    finally:
        await form.close()


def model_card_response(net):
    """`GET /model-card`: the run's MODEL_CARD.md (`bonenet.run.model_card`) as Markdown, or a one-line 404."""
    from fastapi.responses import PlainTextResponse

    card = net.run_dir / CARD_FILE if net.run_dir else None
    if card is None or not card.is_file():
        return _error_response(404, "this run has no model card; train or evaluate it with this version of bonenet")
    return PlainTextResponse(card.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")


def _add_guard(app, config):
    """Checks every request, before any route or the multipart parser runs (`request_problem`)."""
    hosts = allowed_hosts(config)

    @app.middleware("http")
    async def guard(request, call_next):
        problem = request_problem(request.headers, request.url.path, hosts, config.token)
        return _error_response(*problem) if problem else await call_next(request)


def create_app(net, config=None, cams=True):
    """The FastAPI app serving `net` (a loaded `BoneNet`) within `config`'s limits (a `ServeConfig`).

    Every answer other than a 200 is `{"error": "one line"}`, the multipart parser's and the
    framework's own included; no traceback reaches the client or the console. `cams`: return
    heat maps (`ServeConfig.explain`: the fracture locator or Grad-CAM). Defaults to True.
    """
    import asyncio

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    config = config or ServeConfig()
    limits = {"max_file_mb": config.max_file_mb, "max_files": config.max_files, "max_pixels": max_pixels(),
              "body_timeout_s": config.body_timeout}
    lock = threading.Lock()
    admitted = asyncio.Semaphore(CONCURRENT_REQUESTS)
    app = FastAPI(title="BoneNet", version=__version__, description=NOT_FOR_CLINICAL_USE)
    _add_error_handlers(app)
    _add_guard(app, config)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    def get_health():
        return health(net, limits)

    app.get("/model-card")(lambda: model_card_response(net))

    async def answer(request):
        uploads = await asyncio.wait_for(read_study(request, config.max_files, config.max_file_mb),
                                         config.body_timeout)
        # A plain thread: prediction is CPU-bound and queues on the lock; the event loop stays free.
        return await run_in_threadpool(predict_uploads, net, uploads, lock, cams)

    @app.post("/api/predict")
    async def post_predict(request: Request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > config.max_files * config.max_file_mb * 2**20 + 2**20:
            return _error_response(413, f"request of {int(length) / 2**20:.0f} MB is over {config.max_files} "
                                        f"files × {config.max_file_mb:g} MB")
        async with admitted:
            try:
                return await answer(request)
            except RequestRejected as exc:
                return _error_response(exc.status, str(exc))
            except asyncio.TimeoutError:
                return _error_response(408, f"the request's body did not arrive within {config.body_timeout:g} s")
            except ClientDisconnect:  # the client went away mid-upload: nobody to answer
                log.warning("a client disconnected before its upload was complete")
                return _error_response(400, "client disconnected")
            except Exception as exc:  # a fault of ours: one line here, one line to the client
                log.error(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                return _error_response(500, f"internal error ({type(exc).__name__}); see the server's console")

    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def _hostname(authority):
    """The host of a Host header or an origin's authority, lower-case, without its port or IPv6 brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def allowed_hosts(config):
    """The Host names `serve` answers to: the bound address, loopback, and `--allow-hosts`; None for any (a
    wildcard bind with a token, where the token is the guard)."""
    names = {config.host.lower(), *LOOPBACK, *(h.strip().lower() for h in config.allow_hosts.split(",") if h.strip())}
    return None if config.host in WILDCARDS and config.token else names - set(WILDCARDS)


def request_problem(headers, path, hosts, token):
    """Why a request may not be answered, as (status, one line), or None: the guard of every request.

    Args:
        headers: the request's headers (a mapping with lower-case names).
        path: the request's path.
        hosts: `allowed_hosts`.
        token: the token the API needs, or None.
    """
    import hmac

    host = headers.get("host", "")
    if hosts is not None and _hostname(host) not in hosts:
        return 421, (f"this server does not answer to Host {host!r} (it answers to {', '.join(sorted(hosts))}); "
                     "name other hosts with --allow-hosts")
    origin = headers.get("origin")
    if origin and origin != "null" and origin.split("://", 1)[-1].rstrip("/").lower() != host.lower():
        return 403, f"cross-origin request from {origin} refused: this server answers its own page only"
    if token and path.startswith("/api/") and not hmac.compare_digest(
            headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
        return 401, "this server needs 'Authorization: Bearer <token>' (the page asks for it)"
    return None


def check_exposure(config):
    """Refuses to bind beyond this machine without a token unless asked to (`--allow-no-token`)."""
    if config.host not in LOOPBACK and not config.token and not config.allow_no_token:
        raise ValueError(f"--host {config.host}: other machines could send this server images and read the answers, "
                         "and it has no token; set BONENET_TOKEN (or --token), or pass --allow-no-token to accept that")


def startup_line(net, host, port, run_dir):
    """What `serve` prints first: the URL, the run, the backbone's origin, and any exposure."""
    manifest = net.manifest
    line = (f"BoneNet serving http://{host}:{port}/ - run {run_dir} ({len(net.parts)} part models, "
            f"{net.image_size} px, recipe {manifest.recipe['name']}, format {manifest.format_version}, "
            f"thresholds {net.threshold_mode}); backbone: {provenance.backbone_origin(manifest.weights)}. {NOT_FOR_CLINICAL_USE}")
    if tta_note(net.tta):
        line += f"\n{tta_note(net.tta)}"
    if host not in LOOPBACK:
        line += (f"\nbound to {host} by your choice: other machines can reach this server, with no TLS (put it "
                 "behind a reverse proxy that has it)")
    return line


def serve(models_dir, config=None):
    """Loads the run once and serves it within `config` (a `ServeConfig`) until stopped (Ctrl-C)."""
    import uvicorn

    from bonenet.inference.predictor import BoneNet

    config = config or ServeConfig()
    if config.token is None and os.environ.get("BONENET_TOKEN"):
        config = dataclasses.replace(config, token=os.environ["BONENET_TOKEN"])
    check_exposure(config)
    net = BoneNet.load(models_dir, threshold=config.threshold, tta=config.tta, explain=config.explain)
    # Warm-up: the first request should not pay for tracing the models.
    net.predict_image(np.full((net.image_size, net.image_size), 128, np.uint8))
    app = create_app(net, config)
    log.info(startup_line(net, config.host, config.port, models_dir))
    # Idle keep-alive connections close after 5 s; request bodies have BODY_TIMEOUT_S (create_app).
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_keep_alive=5)
