"""Debian's nginx run with the project's own deploy/nginx/parley.conf, in a temporary prefix.

The committed file is used as it is, with only what differs on a test machine substituted: the
listening ports (free ones on 127.0.0.1), the upstream servers (`parley serve` processes), and the
folders for the certificate, cache and log. Each substitution must match, so the test notices
when the committed file changes shape.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARLEY_CONF = ROOT / "deploy" / "nginx" / "parley.conf"
MAKE_CERT = ROOT / "deploy" / "tls" / "make-cert.sh"
NGINX = Path("/usr/sbin/nginx")

_UPSTREAM_SERVERS = re.compile(r"(upstream parley \{\n    least_conn;\n)((?:    server [^\n]+\n)+)")


def nginx_binary() -> Path:
    """Debian's nginx; skips the test (a failure under PARLEY_REQUIRE_SERVICES) where it is missing."""
    found = NGINX if NGINX.exists() else shutil.which("nginx")
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return Path(found)


def make_certificate(folder: Path) -> Path:
    """deploy/tls/make-cert.sh's self-signed certificate, in `folder`; returns the certificate."""
    subprocess.run(["bash", str(MAKE_CERT), str(folder)], check=True, capture_output=True, timeout=60)
    return folder / "parley.crt"


def _substitute(text: str, old: str, new: str, count: int) -> str:
    found = text.count(old)
    assert found == count, f"parley.conf: expected {count} of {old!r}, found {found}"
    return text.replace(old, new)


def render(upstreams: list[str], http_port: int, https_port: int, prefix: Path) -> str:
    """deploy/nginx/parley.conf for this machine: `upstreams` are host:port of `parley serve`s."""
    text = PARLEY_CONF.read_text()
    servers = "".join(f"    server {address} max_fails=3 fail_timeout=10s;\n" for address in upstreams)
    text, replaced = _UPSTREAM_SERVERS.subn(lambda match: match.group(1) + servers, text)
    assert replaced == 1, "parley.conf: the `upstream parley` block has changed shape"
    text = _substitute(text, "    listen [::]:80;\n", "", 1)
    text = _substitute(text, "    listen [::]:443 ssl http2;\n", "", 1)
    text = _substitute(text, "listen 80;", f"listen 127.0.0.1:{http_port};", 1)
    text = _substitute(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", 1)
    for folder, count in (("/etc/nginx/tls/", 2), ("/var/cache/nginx/", 1), ("/var/log/nginx/", 1)):
        text = _substitute(text, folder, f"{prefix}/", count)
    return text


def _main_conf(prefix: Path) -> str:
    # What the nginx image's own nginx.conf gives the http block, and this prefix's temp folders.
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read this prefix
    temp = "".join(
        f"    {kind}_temp_path {prefix}/temp-{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log stderr warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n{temp}"
        f"    include {prefix}/parley.conf;\n}}\n"
    )


@dataclass
class Nginx:
    http_url: str
    https_url: str
    certificate: Path
    access_log: Path


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited ({process.returncode}):\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port}:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_nginx(upstreams: list[str], prefix: Path, http_port: int, https_port: int) -> Iterator[Nginx]:
    """nginx with deploy/nginx/parley.conf in front of `upstreams`, until the block ends."""
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    certificate = make_certificate(prefix)
    (prefix / "parley.conf").write_text(render(upstreams, http_port, https_port, prefix))
    (prefix / "nginx.conf").write_text(_main_conf(prefix))
    log = prefix / "nginx-stderr.log"
    check = subprocess.run(
        [str(binary), "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(binary), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(https_port, process, log)
        yield Nginx(
            f"http://127.0.0.1:{http_port}",
            f"https://127.0.0.1:{https_port}",
            certificate,
            prefix / "parley-access.log",
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
