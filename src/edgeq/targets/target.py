"""A `Target`: one device as a build, a validation or a profile uses it. Built once per device (in `plan_build`,
or by the api for one command): the profile, where its models run (its Runtime, resolved once, so no candidate of
the search probes the host or the EPs again), whether it is reached over a transport (`remote`, decided here and
nowhere else), and the device's kind as named traits, so no other module reads a profile flag as a kind of
device."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgeq.targets.profiles import DeviceProfile, load_device
from edgeq.targets.runtime import CPU_EP, Runtime, host_cpu, make_session, provider_available, runtime_for


@dataclass(frozen=True)
class RemoteAddress:
    """The real device over SSH: the profile's `transport:` section, or --host and its overrides."""

    url: str
    ssh_key: str | None = None
    known_hosts: str | None = None
    remote_python: str | None = None


@dataclass(frozen=True)
class Target:
    profile: DeviceProfile
    remote: RemoteAddress | None = None  # profiling (and the device runner's work) goes to the real device

    @cached_property
    def runtime(self) -> Runtime:
        """Where validation runs: the device's EP here, its CPU stand-in, or the arm64 stand-in. Resolved on first
        use (a remote device need not have an EP here) and then kept: the search's candidates reuse it."""
        return runtime_for(self.profile)

    @property
    def id(self) -> str:
        return self.profile.id

    # The device's kind, named (the profile's flags mean these; only targets/ reads the flags).
    @property
    def scale_rule(self) -> str:
        """`power-of-two` (a DPU: INT8, symmetric, per-tensor, power-of-two scales) or `float`."""
        return "power-of-two" if self.profile.is_dpu else "float"

    @property
    def scheme(self) -> str:
        """How static QDQ models are made for it: `onnxruntime` or `qnn` (onnxruntime's QNN rules)."""
        return self.profile.quantization.scheme

    @property
    def runs_in_stand_in(self) -> bool:
        """Its models run in the device runner inside the arm64 stand-in, not in this process."""
        return self.runtime.in_runner

    @property
    def on_an_emulator(self) -> bool:
        """Its models run on an emulator of the device's own processor (the arm64 stand-in under qemu, the HTP's
        emulator), not on a CPU stand-in computing the same thing: slow, so `validation.emulated_samples` bounds it."""
        return self.runs_in_stand_in or (self.runtime.mode == "emulated" and self.differs_from_simulation)

    @property
    def runs_float(self) -> bool:
        return self.profile.runs_float

    @property
    def differs_from_simulation(self) -> bool:
        """Its models run here on another provider than the CPU EP, whose float QDQ arithmetic is the simulation a
        quantizer calibrates against (the HTP's emulator): worth measuring the simulation beside it."""
        return self.runtime.provider != CPU_EP and not self.runtime.in_runner

    @property
    def provider_here(self) -> bool:
        """This host's onnxruntime has the device's execution provider (built in, or its plugin loads)."""
        return provider_available(self.profile.execution_provider)

    @property
    def stand_in_kind(self) -> str | None:
        """What runs the device's models when its EP is not here: `cpu`, `qemu-arm64`, or None (nothing)."""
        return self.profile.stand_in

    @property
    def measured_runtime(self) -> Runtime:
        """Where a profile (latency, memory) is measured: the real device when it is remote, else `runtime`."""
        return runtime_for(self.profile, remote=True) if self.remote else self.runtime

    def session(self, model: Path | bytes, profile_dir: Path | None = None, spinning: bool = True):
        """An onnxruntime session on the target's runtime (in this process)."""
        return make_session(model, self.profile, profile_dir, spinning, runtime=self.runtime)

    def reference_session(self, model: Path | bytes, spinning: bool = True):
        """A session on this host's CPU EP with the device's threads: where FP32 references run."""
        return make_session(model, host_cpu(self.profile), spinning=spinning)

    def on_host_cpu(self) -> Target:
        """This host's CPU EP with the device's threads, as a target: where FP32 references and the simulation of
        a QDQ model run."""
        return Target(host_cpu(self.profile))

    def transport(self):
        """Where the device runner goes: the real device over SSH when remote; else the arm64 stand-in when the
        device runs in it; else this machine."""
        from edgeq.targets.transport import LocalTransport, QemuTransport, SSHTransport

        if self.remote:
            at = self.remote
            return SSHTransport.from_url(at.url, at.ssh_key, at.known_hosts, at.remote_python)
        if self.profile.runs_in_arm64_stand_in:
            return QemuTransport(self.id, self.profile.stand_in_cpu)
        return LocalTransport()


def load_target(
    device: str | DeviceProfile | None = None,
    host: str | None = None,
    ssh_key: str | None = None,
    known_hosts: str | None = None,
    remote_python: str | None = None,
) -> Target:
    """The target for a device id (None or `host`: the CPU profile this host reproduces) or a loaded profile.
    `host` (ssh://user@host:port) or the profile's own `transport:` section makes it remote; the other arguments
    override the profile's SSH settings."""
    profile = device if isinstance(device, DeviceProfile) else load_device(device)
    section = profile.transport
    remote = None
    if host or section:
        remote = RemoteAddress(
            host or section.host,
            ssh_key,
            known_hosts or (section.known_hosts if section else None),
            remote_python or (section.remote_python if section else None),
        )
    return Target(profile, remote)
