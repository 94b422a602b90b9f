"""Real servers on 127.0.0.1 for the remote-reading tests, each a separate process started and stopped by the test:

* :func:`moto_s3_server`: ``moto`` in server mode, an S3-compatible endpoint that the real ``s3fs`` client
  talks to over HTTP (nothing is patched inside the test process);
* :func:`flaky_http_server`: a static file server (``tests/flaky_http_server.py``) that answers the first
  requests of every file with HTTP 503, for the retry tests;
* :func:`free_port`: a free local port, for these and every other test that listens or rendezvouses on one.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url} within {timeout} s")


@contextlib.contextmanager
def _serving(command: list[str], probe: str):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_up(probe, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def moto_s3_server():
    """Yield the endpoint URL (``http://127.0.0.1:PORT``) of a fresh moto S3 server."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with _serving([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], f"{endpoint}/moto-api/"):
        yield endpoint


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def upload_folder(endpoint: str, folder, bucket: str, public: bool = True) -> None:
    """Create ``bucket`` and upload every file under ``folder`` with its relative path as the key;
    ``public``: readable anonymously (``public-read``), as the Cell Painting Gallery is."""
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    acl = {"ACL": "public-read"} if public else {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                client.put_object(Bucket=bucket, Key=os.path.relpath(path, folder).replace(os.sep, "/"), Body=f,
                                  **acl)


@contextlib.contextmanager
def flaky_http_server(folder, failures: int):
    """Yield the base URL of a server for ``folder`` whose first ``failures`` GETs of each path answer 503;
    ``{base}/_count/{path}`` says how many GETs a path received."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _serving([sys.executable, os.path.join(HERE, "flaky_http_server.py"), os.fspath(folder), str(port),
                   str(failures)], f"{base}/_count/probe"):
        yield base


def get_count(base: str, path: str) -> int:
    with urllib.request.urlopen(f"{base}/_count/{path.lstrip('/')}") as response:
        return int(response.read())
