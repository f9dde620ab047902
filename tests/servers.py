"""Starting and stopping real server processes in tests (MONAI Label, Orthanc)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "monailabel_app"
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_MISSING = "Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"


def orthanc_available() -> bool:
    return bool(ORTHANC) and DICOMWEB_PLUGIN.is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(cmd, log: Path, **kwargs) -> subprocess.Popen:
    """A process in its own group (so :func:`stop_process` ends it with its children), output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_orthanc(work: Path):
    """Orthanc with its DICOMweb plugin on free local ports, storing in ``work/db``, until the block
    ends; yields its base URL (DICOMweb at ``<url>/dicom-web``)."""
    http_port, dicom_port = free_port(), free_port()
    (work / "db").mkdir(parents=True)
    config = {
        "Name": "maht-net-test", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    proc = start_process([ORTHANC, str(work / "orthanc.json")], work / "orthanc.log")
    base = f"http://127.0.0.1:{http_port}"
    try:
        _wait_until_up(f"{base}/system", proc, work / "orthanc.log", 60)
        yield base
    finally:
        stop_process(proc)


def store_in_orthanc(base: str, *files: Path) -> None:
    for path in files:
        answer = requests.post(f"{base}/instances", data=path.read_bytes(), timeout=30).json()
        assert answer["Status"] == "Success", answer


@contextlib.contextmanager
def running_app_on_dicomweb(work: Path, dicomweb: str, bundle: Path, *extra: str):
    """``monailabel start_server`` with a copy of the app (in ``work``) on a DICOMweb studies URL,
    MONAI Label's DICOMweb search filter unset (the app's DX/CR listing applies); yields its URL."""
    app = work / "monailabel_app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model", "bin"))
    env = {k: v for k, v in os.environ.items() if k != "MONAI_LABEL_DICOMWEB_SEARCH_FILTER"}
    env.update(
        MONAI_LABEL_AUTO_UPDATE_SCORING="false", MONAI_LABEL_SESSIONS="false", MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
        MONAI_LABEL_DICOMWEB_CACHE_PATH=str(work / "cache"), PYTHONPATH=str(REPO),
    )
    port = free_port()
    log = work / "server.log"
    proc = start_process(
        [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", dicomweb,
         "--host", "127.0.0.1", "--port", str(port), "--conf", "bundle", str(bundle), *extra],
        log, env=env, cwd=str(work),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{url}/info/", proc, log, 180)
        yield url
    finally:
        stop_process(proc)
