"""Imports from cloud storage against real servers on 127.0.0.1: S3 (moto in server mode) and
HTTP (http.server); the result must equal the local import of the same files."""

import functools
import http.server
import json
import os
import threading

import pytest
from conftest import SECRET, make_label_studio

from segkit.data import importer
from segkit.data.coco_convert import main
from segkit.data.remote import RemoteSourceError, materialise, redact
from segkit.data.sample import make_instance_sample

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def labelme_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_src")
    make_instance_sample(root / "labelme", num_images=5, size=(96, 72), seed=1)
    os.makedirs(root / "labelme" / "more")
    make_instance_sample(root / "labelme" / "more", num_images=2, size=(96, 72), seed=2)
    make_label_studio(root / "coco")  # result.json beside images/, quirks and a missing image included
    return root


@pytest.fixture(scope="module")
def s3(labelme_folder, moto_s3):
    client = moto_s3
    client.create_bucket(Bucket="seed000")
    for folder in ("labelme", "coco"):
        for dirpath, _, files in os.walk(labelme_folder / folder):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), labelme_folder).replace(os.sep, "/")
                client.upload_file(os.path.join(dirpath, f), "seed000", f"project/{rel}")
    return client


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


def _without_source(outputs):
    """The COCO files with ``info.source`` (the one field naming where the data came from) taken
    out, everything else byte for byte; also returns the sources found."""
    sources, out = set(), dict(outputs)
    for split in ("train", "val", "trainval"):
        text = out.pop(f"{split}.json").decode("utf-8")
        source = json.loads(text)["info"]["source"]
        sources.add(source)
        out[f"{split}.json"] = text.replace(json.dumps(source), '"<source>"', 1).encode("utf-8")
    return out, sources


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
    cloud, cloud_source = _without_source(_outputs(tmp_path / "cloud", skip_report=True))
    local, local_source = _without_source({k: v for k, v in local.items() if not k.startswith("report.")})
    assert cloud_source == {"s3://seed000/project/labelme"} and local_source == {str(labelme_folder / "labelme")}
    assert os.path.join("images", "more", "sample_0001.jpg") in local
    assert cloud == local  # JSON byte-identical but for info.source, images byte for byte

    # a re-run downloads nothing that is already there and gives the same bytes
    staged = tmp_path / "cloud" / ".remote-source" / "sample_0000.jpg"
    mtime = staged.stat().st_mtime_ns
    assert main(["s3://seed000/project/labelme/", "--output", str(tmp_path / "cloud"), "--quiet"]) == 0
    assert staged.stat().st_mtime_ns == mtime
    assert _without_source(_outputs(tmp_path / "cloud", skip_report=True))[0] == local


def test_s3_coco_export_import_equals_local_import(s3, labelme_folder, tmp_path, capsys):
    assert importer.main([str(labelme_folder / "coco"), "--output", str(tmp_path / "local"), "--quiet"]) == 0
    local_err = capsys.readouterr().err
    assert importer.main(["s3://seed000/project/coco/", "--output", str(tmp_path / "cloud"), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "s3://seed000/project/coco/: detected coco" in printed.out
    assert printed.err == local_err  # the same problem lines (the missing image), same relative names
    cloud, cloud_source = _without_source(_outputs(tmp_path / "cloud", skip_report=True))
    local, _ = _without_source(_outputs(tmp_path / "local", skip_report=True))
    assert cloud_source == {"s3://seed000/project/coco/"}
    assert cloud == local and any(k.startswith("images") for k in local)
    staged = materialise("s3://seed000/project/coco", str(tmp_path / "cloud"), progress=False)
    assert _outputs(staged) == _outputs(labelme_folder / "coco")  # the staged tree is the bucket's


def test_s3_errors_are_one_line(s3, tmp_path, capsys):
    assert main(["s3://no-such-bucket/x", "--output", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: s3://no-such-bucket/x: not found (no such bucket, prefix or file)"
    with pytest.raises(RemoteSourceError, match=r"^s3://seed000/nothing-here: not found"):
        materialise("s3://seed000/nothing-here", str(tmp_path / "o"), progress=False)
    assert not os.path.exists(tmp_path / "o" / "train.json")


def test_redact_drops_tokens(tmp_path):
    url = "http://127.0.0.1:9/x.json?X-Amz-Signature=tok"  # nothing listens on port 9
    with pytest.raises(RemoteSourceError) as failed:
        materialise(url, str(tmp_path), progress=False)
    assert str(failed.value).startswith("http://127.0.0.1:9/x.json: ") and "tok" not in str(failed.value)
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
    web, web_source = _without_source(_outputs(tmp_path / "web"))
    assert web_source == {url}
    assert web == _without_source(_local_import(labelme_folder, tmp_path / "local", "--no-report"))[0]
