"""How the runner reaches a device: `local` (a subprocess on this machine) or `ssh` (a remote device).

SSH uses the system's OpenSSH client with key authentication only (BatchMode: no password prompts), strict
host-key checking against the given known_hosts file (an unknown host is refused, never added), and every remote
argument quoted. Each run gets its own folder on the device, the pushed bytes are checked by SHA-256, the runner
is killed by `timeout` on the device, and the folder is removed afterwards, also on failure and on timeout."""

from __future__ import annotations

import getpass
import hashlib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edgeq.errors import EdgeqError


class TransportError(EdgeqError):
    """The device could not be reached, refused us, or the run on it failed."""


class LocalTransport:
    name = "local"
    copies_models = False

    def run(self, job_dir: Path, files: list[str], timeout: float) -> None:
        command = [sys.executable, "runner.py", "--job", "job.json", "--out", "result.json"]
        try:
            done = subprocess.run(command, cwd=job_dir, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"the profiling run exceeded {timeout:.0f} s and was stopped",
                "Lower --runs/--min-seconds or raise --timeout",
            ) from None
        if done.returncode != 0:
            raise TransportError(f"the profiling run failed: {_last_line(done.stderr)}")


@dataclass
class SSHTransport:
    host: str
    port: int
    user: str
    key: Path | None
    known_hosts: Path | None
    remote_python: str
    connect_timeout: int = 10
    name = "ssh"
    copies_models = True

    @classmethod
    def from_url(cls, url: str, key: str | None, known_hosts: str | None, remote_python: str | None) -> SSHTransport:
        parsed = urlparse(url)
        if parsed.scheme != "ssh" or not parsed.hostname:
            raise TransportError(f"--host '{url}' is not an ssh://[user@]host[:port] address")
        if parsed.password:
            raise TransportError(f"--host '{url}' carries a password", "Use key authentication (--ssh-key)")
        for label, path in (("--ssh-key", key), ("--known-hosts", known_hosts)):
            if path and not Path(path).expanduser().is_file():
                what = "is not a regular file" if Path(path).expanduser().exists() else "not found"
                raise TransportError(f"{label} file '{path}' {what}")
        return cls(
            parsed.hostname,
            parsed.port or 22,
            parsed.username or getpass.getuser(),
            Path(key).expanduser() if key else None,
            Path(known_hosts).expanduser() if known_hosts else None,
            remote_python or "python3",
        )

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def options(self) -> list[str]:
        opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "PasswordAuthentication=no",
        ]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.key:
            opts += ["-i", str(self.key), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh(self, remote_command: str, timeout: float, send: bytes | None = None) -> str:
        return self._call(self._ssh_command(remote_command), timeout, send).decode(errors="replace")

    def _ssh_command(self, remote_command: str) -> list[str]:
        return ["ssh", *self.options(), "-p", str(self.port), f"{self.user}@{self.host}", remote_command]

    def run(self, job_dir: Path, files: list[str], timeout: float) -> None:
        remote_dir = self.ssh("mktemp -d /tmp/edgeq-run-XXXXXXXX", 30).strip()
        if not remote_dir.startswith("/tmp/edgeq-run-"):
            raise TransportError(f"unexpected answer from {self.address} when making a work folder: {remote_dir[:80]}")
        try:
            self._push(job_dir, files, remote_dir)
            self._verify(job_dir, files, remote_dir)
            run = (
                f"cd {shlex.quote(remote_dir)} && timeout --kill-after=5 {int(timeout)} "
                f"{shlex.quote(self.remote_python)} runner.py --job job.json --out result.json"
            )
            self.ssh(run, timeout + 30)
            listing = self.ssh(f"cd {shlex.quote(remote_dir)} && ls", 30).split()
            wanted = [name for name in listing if name == "result.json" or name.startswith("trace_")]
            self._pull(remote_dir, wanted, job_dir)
        finally:
            self._cleanup(remote_dir)

    def _push(self, job_dir: Path, files: list[str], remote_dir: str) -> None:
        """Stream each file through `cat` on the device: needs only a shell there (no scp/sftp server)."""
        for name in files:
            target = shlex.quote(f"{remote_dir}/{name}")
            self._call(self._ssh_command(f"cat > {target}"), 600, (job_dir / name).read_bytes())

    def _verify(self, job_dir: Path, files: list[str], remote_dir: str) -> None:
        code = "import hashlib,sys\nfor f in sys.argv[1:]: print(hashlib.sha256(open(f,'rb').read()).hexdigest())"
        names = " ".join(shlex.quote(name) for name in files)
        remote = self.ssh(
            f"cd {shlex.quote(remote_dir)} && {shlex.quote(self.remote_python)} -c {shlex.quote(code)} {names}", 120
        ).split()
        local = [hashlib.sha256((job_dir / name).read_bytes()).hexdigest() for name in files]
        if remote != local:
            bad = [name for name, a, b in zip(files, local, remote + [""] * len(files)) if a != b]
            raise TransportError(f"pushed files arrived altered on {self.address}: {', '.join(bad)}")

    def _pull(self, remote_dir: str, names: list[str], job_dir: Path) -> None:
        if not names:
            raise TransportError(f"the runner on {self.address} left no result")
        for name in names:
            data = self._call(self._ssh_command(f"cat {shlex.quote(f'{remote_dir}/{name}')}"), 600)
            (job_dir / Path(name).name).write_bytes(data)

    def _cleanup(self, remote_dir: str) -> None:
        try:
            self.ssh(f"rm -rf {shlex.quote(remote_dir)}", 30)
        except TransportError:
            pass  # the run's own error is the one to report

    def _call(self, command: list[str], timeout: float, send: bytes | None = None) -> bytes:
        stdin = {"input": send} if send is not None else {"stdin": subprocess.DEVNULL}
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout, **stdin)
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"{command[0]} to {self.address} exceeded {timeout:.0f} s and was stopped",
                "The device's work folder is removed; raise --timeout for long runs",
            ) from None
        if done.returncode != 0:
            raise self._explain(done.stderr.decode(errors="replace"), done.returncode)
        return done.stdout

    def _explain(self, stderr: str, code: int) -> TransportError:
        text = stderr.strip()
        known = self.known_hosts or "~/.ssh/known_hosts"
        if (
            "Host key verification failed" in text
            or "No ED25519 host key is known" in text
            or "host key" in text.lower()
        ):
            return TransportError(
                f"the host key of {self.host}:{self.port} is not in {known}: refusing to connect",
                "Check the device's fingerprint, then add it (ssh-keyscan) to that file",
            )
        if "Permission denied" in text:
            return TransportError(f"{self.address} refused the key", "Pass --ssh-key with a key the device accepts")
        if "Connection refused" in text or "timed out" in text or "No route" in text or "Could not resolve" in text:
            return TransportError(f"cannot reach {self.address}: {_last_line(text)}")
        if code == 124:
            return TransportError(
                f"the profiling run on {self.address} hit its time limit and was killed",
                "Lower --runs/--min-seconds or raise --timeout",
            )
        return TransportError(f"the profiling run on {self.address} failed: {_last_line(text)}")


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return "no message"
    last = lines[-1].strip()
    return last if len(last) <= 600 else f"{last[:600]}… (cut at 600 characters)"


class QemuTransport:
    """The runner inside a local arm64 stand-in (see edgeq.targets.standin): a chroot whose aarch64 binaries run
    through qemu-user-static. One work folder per run under the stand-in's /tmp, removed afterwards."""

    name = "qemu"
    copies_models = True

    def __init__(self, device_id: str, cpu: str | None = None):
        from edgeq.targets.standin import is_ready, rootfs

        if not is_ready(device_id):
            raise TransportError(
                f"the arm64 stand-in for '{device_id}' is not set up", f"Run: edgeq devices setup {device_id}"
            )
        self.root = rootfs(device_id)
        self.cpu = cpu

    def run(self, job_dir: Path, files: list[str], timeout: float) -> None:
        import shutil
        import tempfile

        from edgeq.targets.standin import run_in

        work = Path(tempfile.mkdtemp(prefix="edgeq-run-", dir=self.root / "tmp"))
        try:
            for name in files:
                shutil.copy2(job_dir / name, work / name)
            inside = "/" + str(work.relative_to(self.root))
            try:
                run_in(
                    self.root,
                    ["/usr/bin/python3", "runner.py", "--job", "job.json", "--out", "result.json"],
                    timeout,
                    cwd=inside,
                    cpu=self.cpu,
                )
            except subprocess.TimeoutExpired:
                raise TransportError(
                    f"the run in the arm64 stand-in exceeded {timeout:.0f} s and was stopped"
                ) from None
            except EdgeqError as exc:
                raise TransportError(exc.message) from None
            for produced in work.iterdir():
                if produced.name == "result.json" or produced.name.startswith(("trace_", "outputs_")):
                    shutil.copy2(produced, job_dir / produced.name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
