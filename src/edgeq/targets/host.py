"""This host, probed once per process: its CPU architecture and flags, and whether a device profile's numerics
run here (`on-host`) or are emulated. The probes themselves live in the device runner (runner.py), which must
stay one self-contained file because it also runs on the device; this module is the one place edgeq asks them."""

from __future__ import annotations

from functools import cache

from edgeq.targets import runner


@cache
def machine() -> str:
    """The host's CPU architecture, spelled as Linux does (x86_64, aarch64)."""
    return runner.machine()


@cache
def cpu_flags() -> frozenset[str]:
    """Every CPU flag of the host (as in /proc/cpuinfo)."""
    return frozenset(runner.cpu_info()[1])


def cpu_model() -> str:
    return runner.cpu_info()[0]


def environment() -> dict:
    """This host, described as the device runner describes a device (threads left to the caller)."""
    return runner.environment({})


def mode_for(device) -> str:
    """For a DeviceProfile: `on-host` when the device's own EP runs on a host of the device's architecture with the CPU features
    the device relies on and none of those it lacks that change the kernels; `emulated` otherwise."""
    flags = cpu_flags()
    same_kernels = set(device.cpu_features) <= flags and not set(device.cpu_features_absent) & flags
    return "on-host" if machine() == device.arch and same_kernels else "emulated"
