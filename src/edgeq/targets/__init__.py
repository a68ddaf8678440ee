"""The targets wing: everything about the devices a model is built for, in one place.

- profiles.py: device profiles (YAML in devices/ or $EDGEQ_DEVICES_PATH) and their named traits;
- host.py: this host, probed once (architecture, CPU flags, on-host or emulated);
- runtime.py: where a device's models run (its EP, a CPU stand-in, the arm64 stand-in, remote) and sessions there;
- target.py: `Target`, one device as a build uses it (profile + runtime resolved once + remote + traits);
- placement.py, coverage.py: where nodes ran, and what a mobile EP would take;
- runner.py (runs on the device), transport.py (local, arm64 stand-in, SSH), outputs.py, standin.py."""

from edgeq.targets.profiles import HOST, DeviceProfile, host_cpu_device, list_devices, load_device
from edgeq.targets.target import Target, load_target

__all__ = ["HOST", "DeviceProfile", "Target", "host_cpu_device", "list_devices", "load_device", "load_target"]
