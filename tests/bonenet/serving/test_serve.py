"""`bonenet serve`'s API through FastAPI's TestClient, against the session's small trained run."""

import asyncio
import io
import json
import os
import tempfile

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from bonenet.configs import ServeConfig
from bonenet.inference.inputs import predict_paths
from bonenet.inference.notes import calibration_note
from bonenet.inference.predictor import BoneNet
from bonenet.serving.serve import create_app, startup_line


@pytest.fixture(scope="module")
def net(full_run):
    return BoneNet.load(full_run)


@pytest.fixture(scope="module")
def client(net):
    return TestClient(create_app(net), base_url="http://localhost")


@pytest.fixture(scope="module")
def study(index):
    images = index.images[(index.images.part == "XR_ELBOW") & (index.images.split == "valid")]
    paths = sorted(images.groupby("study").path.apply(list).values, key=len)[-1]
    assert len(paths) >= 2
    return paths


def _files(*named):
    return [("files", (name, io.BytesIO(data), "application/octet-stream")) for name, data in named]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_run_without_a_model_card_answers_404_in_the_error_shape(net):
    from bonenet.inference.predictor import BoneNet

    bare = TestClient(create_app(BoneNet(net.manifest, net.members, net.trunk)),  # no run folder: no card
                      base_url="http://localhost")
    response = bare.get("/model-card")
    assert response.status_code == 404 and response.json() == {
        "error": "this run has no model card; train or evaluate it with this version of bonenet"}


def test_a_good_study_gives_predicts_answer(client, net, study):
    response = client.post("/api/predict", files=_files(*((f"view{i}.png", _read(p)) for i, p in enumerate(study))))
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = predict_paths(net, [os.path.dirname(study[0])])
    assert len(answer) == len(expected) == len(study) + 1
    for got, want in zip(answer, expected, strict=True):
        for key in ("part", "part_confidence", "p_abnormal", "threshold", "threshold_source", "abnormal", "calibrated",
                    "calibration"):
            assert got[key] == pytest.approx(want[key], abs=1e-6) if isinstance(want[key], float) else got[key] == want[key]
    assert answer[-1]["study"] == "upload" and answer[-1]["images"] == [f"view{i}.png" for i in range(len(study))]
    for entry in answer[:-1]:
        assert entry["cam"].startswith("data:image/png;base64,") and entry["image"].startswith("data:image/png;base64,")
        assert "router confidence" in entry["cam_caption"]


def test_a_corrupt_file_is_an_error_entry_and_the_others_are_still_read(client, study):
    good = _read(study[0])
    corrupt = good[:60] + bytes(len(good) - 80) + good[-20:]  # PNG signature and IEND, broken body
    response = client.post("/api/predict", files=_files(("a.png", good), ("broken.png", corrupt), ("c.png", good)))
    assert response.status_code == 200
    answer = response.json()
    assert [e.get("path") for e in answer[:-1]] == ["a.png", "broken.png", "c.png"]
    assert "broken.png" in answer[1]["error"] and "corrupt" in answer[1]["error"]
    assert answer[0]["p_abnormal"] == pytest.approx(answer[2]["p_abnormal"])
    assert answer[-1]["images"] == ["a.png", "c.png"]


def test_a_text_file_is_refused_with_its_name(client, study):
    response = client.post("/api/predict", files=_files(("a.png", _read(study[0])), ("notes.txt", b"hello\n")))
    assert response.status_code == 415
    assert response.json() == {"error": "notes.txt: not a PNG, JPEG or DICOM image"}


def test_limits_give_413_and_names_are_never_paths(net, study):
    small = TestClient(create_app(net, ServeConfig(max_file_mb=0.01, max_files=2)), base_url="http://localhost")
    data = _read(study[0])
    assert len(data) > 0.01 * 2**20
    response = small.post("/api/predict", files=_files(("../../etc/passwd", data)))
    assert response.status_code == 413 and response.json()["error"] == "passwd: larger than 0.01 MB"
    tiny = cv2.imencode(".png", np.full((64, 64), 90, np.uint8))[1].tobytes()
    response = small.post("/api/predict", files=_files(*((f"{i}.png", tiny) for i in range(3))))
    assert response.status_code == 413 and "at most 2 files" in response.json()["error"]


@pytest.mark.parametrize("kwargs,status", [({}, 422), ({"data": {"x": "1"}}, 422),
                                           ({"content": b"raw", "headers": {"content-type": "image/png"}}, 422)])
def test_requests_without_files_get_a_4xx_in_words(client, kwargs, status):
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status and "error" in response.json()


def test_health_describes_the_run(client, net):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["parts"] == net.parts and health["image_size"] == 64
    assert health["recipe"]["name"] == net.manifest.recipe["name"] and health["format_version"] == 3
    assert health["backbone"]["kind"] == "none" and "not ImageNet-pretrained" in health["backbone_warning"]
    assert health["limits"] == {"max_file_mb": 20, "max_files": 32, "max_pixels": 100_000_000, "body_timeout_s": 30}
    assert health["calibration"] == {key: calibration_note(net.manifest, key) for key in ["router", *net.parts]}
    assert health["model_card"] == "/model-card"
    card = client.get(health["model_card"])
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert card.text == (net.run_dir / "MODEL_CARD.md").read_text() and "not for clinical use" in card.text
    page = client.get("/")
    assert page.status_code == 200 and "not for clinical use" in page.text.lower() and 'type="file"' in page.text
    assert "http" not in page.text.split("<script>")[1].replace("/api/", "")  # no CDN, no outside address


def _open_temporary_files():
    """This process's open files in the temporary folder, unlinked ones included: Starlette spools an upload
    over 1 MB to an anonymous file, which no listing of the folder shows but its descriptor does."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(tempfile.gettempdir()):
            held.add((fd, target))
    return held


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads the open descriptors from /proc")
def test_uploads_leave_no_temporary_file_open(client, study, monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100), dtype=np.uint8)
    big = cv2.imencode(".png", noise)[1].tobytes()  # over Starlette's 1 MB in-memory spool
    assert len(big) > 2**20
    before = _open_temporary_files()
    response = client.post("/api/predict", files=_files(("big.png", big), ("b.png", _read(study[0]))))
    assert response.status_code == 200
    assert _open_temporary_files() - before == set()
    # The check sees a leak: a form left unclosed keeps the spooled file's descriptor.
    from starlette.datastructures import FormData

    left_open, close = [], FormData.close

    async def keep_open(form):
        left_open.append(form)

    monkeypatch.setattr(FormData, "close", keep_open)
    client.post("/api/predict", files=_files(("big.png", big), ("b.png", _read(study[0]))))
    assert _open_temporary_files() - before
    for form in left_open:
        asyncio.run(close(form))
    assert _open_temporary_files() - before == set()


def test_the_startup_line_names_the_url_the_run_and_an_exposed_address(net, full_run):
    line = startup_line(net, "127.0.0.1", 8000, full_run)
    assert line.startswith("BoneNet serving http://127.0.0.1:8000/") and "random initialisation" in line
    assert "\n" not in line
    assert "by your choice" in startup_line(net, "0.0.0.0", 8000, full_run)


@pytest.mark.parametrize("imagenet", [False, True])
def test_the_caveat_travels_with_every_output_of_a_run_that_never_saw_a_real_radiograph(run, study, tmp_path, imagenet):
    """A predict row, an API answer and a heat map's caption say when the run's backbone is not
    ImageNet-pretrained or its data synthetic; an ImageNet run on real data says nothing of the kind."""
    import json
    import shutil

    import run_pipeline

    run = shutil.copytree(run[0], tmp_path / "run")  # router and wrist: every study is routed to the wrist
    if imagenet:  # the manifest of a run on ImageNet weights and real data; no download needed
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["weights"] = {"kind": "imagenet", "description": "ImageNet (Keras)"}
        for entry in manifest["models"].values():
            entry.setdefault("dataset", {})["synthetic"] = False
        (run / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "p.json"
    code = run_pipeline.main(["predict", study[0], "--models-dir", run, "--json", out, "--csv", tmp_path / "p.csv",
                              "--cam-dir", tmp_path / "cams"])
    assert code == 0
    row = json.loads(out.read_text())[0]
    csv_row = __import__("pandas").read_csv(tmp_path / "p.csv").iloc[0]
    answer = TestClient(create_app(BoneNet.load(run)), base_url="http://localhost").post(
        "/api/predict", files=_files(("v.png", _read(study[0]))))
    if imagenet:
        assert row["caveat"] is None and "CAVEAT" not in row["cam_caption"] and csv_row.isna()["caveat"]
        assert all(entry["caveat"] is None for entry in answer.json())
    else:
        caveat = "CAVEAT: no ImageNet backbone, synthetic training data; unproven on real radiographs"
        assert row["caveat"] == caveat and row["cam_caption"].startswith(caveat) and csv_row["caveat"] == caveat
        assert all(entry["caveat"] == caveat for entry in answer.json())


def _bomb_png(rows, cols):
    """A tiny PNG whose header declares rows × cols pixels: a decompression bomb's calling card."""
    import zlib

    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = cols.to_bytes(4, "big") + rows.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.corpus("B1")
def test_a_decompression_bomb_is_refused_from_its_header_in_the_error_shape(client):
    response = client.post("/api/predict", files=_files(("bomb.png", _bomb_png(30_000, 30_000))))
    assert response.status_code == 422
    assert response.json() == {"error": "no readable image in this study: bomb.png: image of 30,000×30,000 pixels is "
                                        "over the pixel budget of 100,000,000 (set BONENET_MAX_PIXELS to raise it)"}


@pytest.mark.corpus("B2")
@pytest.mark.parametrize("case", ["long file name", "10,000 fields", "10,000 files", "no boundary", "unknown path",
                                  "wrong method"])
def test_every_refusal_has_the_documented_error_shape(client, study, case):
    good = _read(study[0])
    if case == "long file name":
        response = client.post("/api/predict", files=_files(("x" * 20_000 + ".png", good)))
    elif case == "10,000 fields":
        response = client.post("/api/predict", data={f"f{i}": "1" for i in range(10_000)}, files=_files(("a.png", good)))
    elif case == "10,000 files":
        response = client.post("/api/predict", files=_files(*((f"{i}.png", b"x") for i in range(10_000))))
    elif case == "no boundary":
        response = client.post("/api/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    elif case == "unknown path":
        response = client.get("/api/nothing")
    else:
        response = client.get("/api/predict")
    assert 400 <= response.status_code < 500
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and body["error"], body


def _asgi_post(app, receive_after_headers):
    """Runs one POST /api/predict through the app with a hand-made ASGI `receive`; returns (status, body)."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"multipart/form-data; boundary=x"),
                         (b"content-length", b"100000")],
             "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 8000)}
    sent = []

    async def send(message):
        sent.append(message)

    async def run():
        await app(scope, receive_after_headers, send)

    asyncio.run(asyncio.wait_for(run(), 20))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.corpus("B3")
def test_a_client_that_stalls_mid_upload_gets_408_and_one_that_leaves_no_traceback(net, capsys, caplog):
    import asyncio

    app = create_app(net, ServeConfig(body_timeout=1))
    first = {"sent": False}

    async def stall():
        if not first["sent"]:
            first["sent"] = True
            return {"type": "http.request", "body": b"--x\r\nContent-Disposition: form-data; name=\"files\"", "more_body": True}
        await asyncio.sleep(3600)  # headers and a little body, then nothing

    status, body = _asgi_post(app, stall)
    assert status == 408 and json.loads(body) == {"error": "the request's body did not arrive within 1 s"}

    async def leave():
        return {"type": "http.disconnect"}

    status, _ = _asgi_post(create_app(net), leave)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ClientDisconnect" not in err
    [record] = [r for r in caplog.records if r.name == "bonenet.serving.serve"]
    assert record.getMessage() == "a client disconnected before its upload was complete" and record.exc_info is None



# Whom the server answers: the Host, the Origin, the token (the threat model in docs/predict-and-serve.md).

@pytest.mark.corpus("W1")
@pytest.mark.parametrize("path", ["/api/health", "/api/predict", "/"])
def test_a_host_that_is_not_this_server_gets_421_in_the_error_shape(net, study, path):
    client = TestClient(create_app(net), base_url="http://evil.example")  # a DNS-rebinding page's Host
    answer = client.post(path, files=_files(("v.png", _read(study[0])))) if path == "/api/predict" else client.get(path)
    assert answer.status_code == 421 and set(answer.json()) == {"error"}
    assert "does not answer to Host 'evil.example'" in answer.json()["error"]
    for host in ("http://127.0.0.1:8000", "http://localhost", "http://[::1]:8000"):
        assert TestClient(create_app(net), base_url=host).get("/api/health").status_code == 200, host
    named = TestClient(create_app(net, ServeConfig(allow_hosts="bonenet.lan, proxy")), base_url="http://proxy:80")
    assert named.get("/api/health").status_code == 200


@pytest.mark.corpus("W2")
def test_a_cross_origin_post_is_refused_and_no_cors_header_is_ever_sent(client, study):
    answer = client.post("/api/predict", files=_files(("v.png", _read(study[0]))),
                         headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and "cross-origin request from https://evil.example" in answer.json()["error"]
    same = client.get("/api/health", headers={"Origin": "http://localhost"})  # the page itself
    assert same.status_code == 200
    for response in (answer, same, client.options("/api/predict", headers={"Origin": "https://evil.example",
                                                                           "Access-Control-Request-Method": "POST"})):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


@pytest.mark.corpus("W3")
def test_with_a_token_the_api_needs_it_and_the_page_does_not(net, study):
    client = TestClient(create_app(net, ServeConfig(token="s3cret")), base_url="http://localhost")
    assert client.get("/api/health").status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    refused = client.post("/api/predict", files=_files(("v.png", _read(study[0]))))
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["error"]
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/health", headers=good).status_code == 200
    assert client.post("/api/predict", files=_files(("v.png", _read(study[0]))), headers=good).status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="token"' in page.text  # the page can send the token


@pytest.mark.corpus("W3")
def test_binding_beyond_loopback_without_a_token_is_refused_unless_asked(run, capsys, monkeypatch):
    from conftest import run_cli

    from bonenet.serving.serve import allowed_hosts, check_exposure

    monkeypatch.delenv("BONENET_TOKEN", raising=False)
    code, err = run_cli(["serve", "--models-dir", run[0], "--host", "0.0.0.0"], capsys)
    assert code == 2 and len(err) == 1 and "--host 0.0.0.0: other machines could send" in err[0] and "BONENET_TOKEN" in err[0]
    check_exposure(ServeConfig(host="0.0.0.0", token="t"))  # a token, or the explicit choice, lets it bind
    check_exposure(ServeConfig(host="0.0.0.0", allow_no_token=True))
    assert allowed_hosts(ServeConfig(host="0.0.0.0", token="t")) is None  # the token guards; any Host name
    assert "evil.example" not in allowed_hosts(ServeConfig(host="0.0.0.0", allow_no_token=True))
