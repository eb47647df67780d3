#!/usr/bin/env python3
"""
Set up and run lbproxy from a fresh checkout, with nothing but python3.

    python3 dev.py run     # virtualenv, install, run the demo
    python3 dev.py test    # virtualenv, install, run the whole test suite
    python3 dev.py docs    # build the Sphinx docs with warnings as errors
    python3 dev.py bench   # the side-by-side benchmark against HAProxy

Each command creates (or reuses) the virtualenv in .venv and installs the
project's dependencies into it; lbproxy runs from this checkout.  The test command also installs the Debian packages the
tests need (a real Chromium, etcd, HAProxy, ...) when it runs as root and
they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"

#: Debian packages the tests drive for real, by the program that tells
#: whether each is installed.
SYSTEM_PACKAGES = {
    "/usr/bin/chromium": "chromium",
    "/usr/bin/etcd": "etcd-server",
    "/usr/sbin/haproxy": "haproxy",
    "/usr/sbin/keepalived": "keepalived",
    "/usr/sbin/nginx": "nginx-light",
    "/usr/bin/openssl": "openssl",
    "/usr/sbin/ip": "iproute2",
    "/usr/bin/strace": "strace",
    "/usr/bin/systemd-analyze": "systemd",
    "/usr/bin/wrk": "wrk",
}


def sh(*args: str | os.PathLike, **kw) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kw)


def apt_install(packages: list[str]) -> None:
    if not packages:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(
            "missing system packages: " + " ".join(packages)
            + "\ninstall them with: sudo apt-get install -y " + " ".join(packages)
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, env=env)


def venv(extras: str) -> None:
    if not PY.exists():
        try:
            import ensurepip  # noqa: F401
            import venv as _venv  # noqa: F401
        except ImportError:
            apt_install(["python3-venv"])
        sh(sys.executable, "-m", "venv", VENV)
    stamp = VENV / f".installed-{extras}"
    spec = ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < spec.stat().st_mtime:
        # Dependencies only: lbproxy itself runs from this checkout (on
        # PYTHONPATH), so an edit needs no reinstall; a test installs the
        # wheel into a virtualenv of its own.
        import tomllib

        project = tomllib.loads(spec.read_text())["project"]
        wanted = list(project["dependencies"])
        for extra in extras.split(","):
            wanted += project["optional-dependencies"].get(extra, [])
        sh(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
        sh(PY, "-m", "pip", "install", "-q", *wanted, cwd=ROOT)
        stamp.touch()


def system_packages() -> None:
    apt_install(sorted({pkg for path, pkg in SYSTEM_PACKAGES.items() if not Path(path).exists()}))


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    rest = argv[1:]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if command == "run":
        venv("run")
        child = subprocess.Popen(
            [str(VENV / "bin" / "twistd"), "-n", "--pidfile=", "lbproxy-demo", *rest],
            cwd=ROOT, env=env,
        )
        # Ctrl-C reaches twistd too (same process group); let it shut down
        # cleanly instead of being killed when this wrapper is interrupted.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = child.wait()
        return 0 if code in (0, -signal.SIGINT) else code
    if command == "test":
        system_packages()
        venv("test,docs")
        return subprocess.call([str(PY), "-m", "pytest", "--durations=15", *rest], cwd=ROOT, env=env)
    if command == "docs":
        venv("docs")
        return subprocess.call(
            [str(PY), "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"],
            cwd=ROOT, env=env,
        )
    if command == "bench":
        system_packages()
        venv("test,bench")
        return subprocess.call([str(PY), "bench/run.py", *rest], cwd=ROOT, env=env)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
