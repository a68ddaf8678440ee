"""A local stand-in for an arm64 device: a Debian arm64 root file system (debootstrap) run through qemu-user-static
with a binfmt_misc entry, holding the aarch64 onnxruntime and numpy wheels from PyPI. The profiling/validation
runner executes inside it, so the numbers come from aarch64 onnxruntime's own integer kernels (mode emulated; the
latency is qemu's, not the device's).

`edgeq devices setup raspberry-pi-5` makes it once, under the user's cache folder; later calls find it ready."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from edgeq.errors import DeviceError
from edgeq.progress import say

BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "edgeq-aarch64"
QEMU = Path("/usr/bin/qemu-aarch64-static")
SITE = "/opt/edgeq-site"  # inside the root file system
SUITE = "bookworm"
# The ELF header of an aarch64 executable, and the mask of the bytes that identify it (from Debian's qemu binfmt.d).
AARCH64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


def standin_dir(device_id: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgeq" / "standins" / device_id


def rootfs(device_id: str) -> Path:
    return standin_dir(device_id) / "rootfs"


def is_ready(device_id: str) -> bool:
    return (standin_dir(device_id) / "ready.json").is_file()


def setup(device_id: str) -> dict:
    """Make (or find) the stand-in. Returns what it holds. Raises DeviceError with the reason when this machine
    cannot (not Linux x86-64, not root, no binfmt_misc, no debootstrap/qemu and no way to install them)."""
    folder = standin_dir(device_id)
    _check_machine()
    ensure_binfmt()
    if is_ready(device_id):
        info = json.loads((folder / "ready.json").read_text())
        say(f"✓ {device_id} stand-in already set up in {folder} ({info['machine']}, onnxruntime {info['onnxruntime']})")
        return info
    _install_host_tools()
    scratch = folder / "rootfs.partial"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    _debootstrap(scratch)
    _install_wheels(scratch)
    info = probe(scratch)
    if rootfs(device_id).exists():
        shutil.rmtree(rootfs(device_id))
    scratch.rename(rootfs(device_id))
    (folder / "ready.json").write_text(json.dumps(info, indent=2))
    say(f"✓ {device_id} stand-in ready: {info['machine']}, Python {info['python']}, onnxruntime {info['onnxruntime']}")
    return info


def _check_machine() -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise DeviceError(f"an arm64 stand-in needs a Linux x86-64 host, not {sys.platform} {platform.machine()}")
    if os.geteuid() != 0:
        raise DeviceError(
            "setting up the arm64 stand-in needs root (debootstrap, chroot and binfmt_misc)",
            "Run it as root, e.g. sudo edgeq devices setup raspberry-pi-5",
        )


def ensure_binfmt() -> None:
    """Mount binfmt_misc if needed and register qemu-aarch64-static with the F flag (works inside chroots)."""
    if not (BINFMT / "register").exists():
        done = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise DeviceError(
                f"binfmt_misc is not available on this machine ({done.stderr.strip() or 'mount failed'})",
                "The arm64 stand-in needs the kernel's binfmt_misc (a privileged host or VM)",
            )
    if (BINFMT / BINFMT_NAME).exists():
        return
    if not QEMU.exists():
        _install_host_tools()
    entry = f":{BINFMT_NAME}:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{QEMU}:F"
    try:
        (BINFMT / "register").write_text(entry)
    except OSError as exc:
        raise DeviceError(
            f"cannot register qemu-aarch64 with binfmt_misc ({exc.strerror})",
            "Run as root on a host that allows binfmt_misc",
        ) from None


def _install_host_tools() -> None:
    missing = [
        pkg
        for pkg, tool in (("qemu-user-static", QEMU), ("debootstrap", Path("/usr/sbin/debootstrap")))
        if not tool.exists()
    ]
    if not missing:
        return
    say(f"▶ installing {', '.join(missing)} from Debian's archive")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise DeviceError(f"cannot install {', '.join(missing)}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def debian_mirror() -> str:
    """The Debian archive this machine's apt is set up to use (deb822 or one-line sources)."""
    sources = [
        Path("/etc/apt/sources.list.d/debian.sources"),
        Path("/etc/apt/sources.list"),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
    ]
    for source in sources:
        if not source.is_file():
            continue
        for line in source.read_text().splitlines():
            words = line.split()
            url = (
                words[1]
                if line.startswith("URIs:")
                else (words[1] if line.startswith("deb ") and len(words) > 1 else None)
            )
            if url and url.rstrip("/").endswith("/debian"):
                return url
    raise DeviceError("no Debian archive found in this machine's apt sources", "debootstrap needs one")


def _debootstrap(target: Path) -> None:
    mirror = debian_mirror()
    say(f"▶ debootstrap: Debian {SUITE} arm64 (minbase + python3) into {target} — a few minutes")
    command = ["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3", SUITE, str(target), mirror]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in process.stdout:
        last = line.strip() or last
        if line.startswith("I: Retrieving") or line.startswith("I: Configuring") or line.startswith("I: Base system"):
            say(f"  {line.strip()}")
    if process.wait() != 0:
        raise DeviceError(f"debootstrap failed: {last}", f"See {target / 'debootstrap' / 'debootstrap.log'}")


def _install_wheels(target: Path) -> None:
    """The host's own onnxruntime and numpy versions, as aarch64 wheels for the rootfs's Python."""
    python = _rootfs_python_version(target)
    wanted = [f"onnxruntime=={metadata.version('onnxruntime')}", f"numpy=={metadata.version('numpy')}"]
    say(f"▶ pip: aarch64 wheels for Python {python}: {', '.join(wanted)}")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--target",
        str(target / SITE.lstrip("/")),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "--platform",
        "manylinux_2_28_aarch64",
        "--platform",
        "manylinux2014_aarch64",
        "--platform",
        "manylinux_2_17_aarch64",
        *wanted,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeviceError(f"cannot fetch the aarch64 wheels: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def _rootfs_python_version(target: Path) -> str:
    found = sorted((target / "usr" / "bin").glob("python3.*"))
    versions = [
        p.name.removeprefix("python") for p in found if p.name.removeprefix("python").replace(".", "").isdigit()
    ]
    if not versions:
        raise DeviceError(f"no python3 in the stand-in's root file system {target}")
    return versions[0]


def probe(target: Path) -> dict:
    code = (
        "import json, platform, numpy, onnxruntime; print(json.dumps({'machine': platform.machine(), "
        "'python': platform.python_version(), 'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__}))"
    )
    out = run_in(target, ["/usr/bin/python3", "-c", code], timeout=300)
    return json.loads(out.strip().splitlines()[-1])


def run_in(target: Path, command: list[str], timeout: float, cwd: str = "/", cpu: str | None = None) -> str:
    """Run a command inside the root file system (chroot; aarch64 binaries go through qemu via binfmt_misc, which
    emulates `cpu`, or its `max` model when None)."""
    ensure_binfmt()
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": SITE,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        **({"QEMU_CPU": cpu} if cpu else {}),
    }
    shell = f"cd {shlex.quote(cwd)} && exec " + " ".join(shlex.quote(c) for c in command)
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "chroot"
    done = subprocess.run(
        [chroot, str(target), "/bin/sh", "-c", shell], capture_output=True, text=True, timeout=timeout, env=env
    )
    if done.returncode != 0:
        raise DeviceError(
            f"the arm64 stand-in failed: {(done.stderr.strip().splitlines() or ['no message'])[-1][:300]}"
        )
    return done.stdout
