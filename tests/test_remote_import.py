"""Imports from cloud storage against real servers on 127.0.0.1: S3 (moto in server mode) and
HTTP (http.server); the result must equal the local import of the same files."""

import functools
import http.server
import os
import threading

import pytest

from segkit.data.coco_convert import main
from segkit.data.remote import RemoteSourceError, materialise, redact
from segkit.data.sample import make_instance_sample

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

SECRET = "testing-secret-never-printed"


@pytest.fixture(scope="module")
def labelme_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_src")
    make_instance_sample(root / "labelme", num_images=5, size=(96, 72), seed=1)
    os.makedirs(root / "labelme" / "more")
    make_instance_sample(root / "labelme" / "more", num_images=2, size=(96, 72), seed=2)
    # a COCO export as Label Studio writes it: result.json beside images/
    os.makedirs(root / "coco" / "images")
    for name in ("a.jpg", "b.jpg"):
        (root / "coco" / "images" / name).write_bytes((root / "labelme" / "sample_0000.jpg").read_bytes())
    (root / "coco" / "result.json").write_text('{"images": [], "annotations": [], "categories": []}\n')
    return root


@pytest.fixture(scope="module")
def s3(labelme_folder, tmp_path_factory):
    import boto3
    from s3fs import S3FileSystem

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    none = str(tmp_path_factory.mktemp("aws") / "none")
    with pytest.MonkeyPatch.context() as env:
        # the usual AWS environment, nothing else: credentials and an S3-compatible endpoint
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
                           "AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none}.items():
            env.setenv(key, value)
        S3FileSystem.clear_instance_cache()  # a cached filesystem would keep another endpoint
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket="seed000")
        for folder in ("labelme", "coco"):
            for dirpath, _, files in os.walk(labelme_folder / folder):
                for f in files:
                    rel = os.path.relpath(os.path.join(dirpath, f), labelme_folder).replace(os.sep, "/")
                    client.upload_file(os.path.join(dirpath, f), "seed000", f"project/{rel}")
        yield client
        S3FileSystem.clear_instance_cache()
    server.stop()


def _outputs(folder, skip_report=False):
    """{relative path: bytes} of a folder; ``skip_report``: without report.* (they name the folder)."""
    out = {}
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in files:
            path = os.path.join(dirpath, f)
            if skip_report and f.startswith("report."):
                continue
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


def _local_import(labelme_folder, out, *options):
    assert main([str(labelme_folder / "labelme"), "--output", str(out), "--quiet", *options]) == 0
    return _outputs(out)


def test_s3_labelme_import_equals_local_import(s3, labelme_folder, tmp_path, capsys):
    local = _local_import(labelme_folder, tmp_path / "local")
    capsys.readouterr()
    assert main(["s3://seed000/project/labelme", "--output", str(tmp_path / "cloud"), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "s3://seed000/project/labelme" in printed.out and SECRET not in printed.out + printed.err
    assert os.path.isfile(tmp_path / "cloud" / "report.json")
    cloud = _outputs(tmp_path / "cloud", skip_report=True)
    local = {k: v for k, v in local.items() if not k.startswith("report.")}
    assert {"train.json", "val.json", "trainval.json", os.path.join("images", "more", "sample_0001.jpg")} <= set(local)
    assert cloud == local  # JSON byte-identical, images byte for byte

    # a re-run downloads nothing that is already there and gives the same bytes
    staged = tmp_path / "cloud" / ".remote-source" / "sample_0000.jpg"
    mtime = staged.stat().st_mtime_ns
    assert main(["s3://seed000/project/labelme/", "--output", str(tmp_path / "cloud"), "--quiet"]) == 0
    assert staged.stat().st_mtime_ns == mtime and _outputs(tmp_path / "cloud", skip_report=True) == local


def test_s3_coco_export_is_mirrored(s3, labelme_folder, tmp_path):
    staged = materialise("s3://seed000/project/coco", str(tmp_path / "out"), progress=False)
    assert _outputs(staged) == _outputs(labelme_folder / "coco")


def test_s3_errors_are_one_line(s3, tmp_path, capsys):
    assert main(["s3://no-such-bucket/x", "--output", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: s3://no-such-bucket/x: not found (no such bucket, prefix or file)"
    with pytest.raises(RemoteSourceError, match=r"^s3://seed000/nothing-here: not found"):
        materialise("s3://seed000/nothing-here", str(tmp_path / "o"), progress=False)
    assert not os.path.exists(tmp_path / "o" / "train.json")


def test_redact_drops_tokens():
    assert redact("https://user:pw@host:8443/a/b?X-Amz-Signature=abc#x") == "https://host:8443/a/b"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"


def test_https_folder_import_equals_local_import(labelme_folder, tmp_path):
    pytest.importorskip("aiohttp")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(labelme_folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/labelme/"
        assert main([url, "--output", str(tmp_path / "web"), "--quiet", "--no-report"]) == 0
    finally:
        server.shutdown()
    assert _outputs(tmp_path / "web") == _local_import(labelme_folder, tmp_path / "local", "--no-report")
