"""Profile: run models on a device, locally or over SSH, and measure latency, load time, memory, per-op time and
placement. The runner (runner.py) is the only code that runs on the device."""

from edgeq.profile.run import STANDARD, profile_models
from edgeq.profile.transport import LocalTransport, SSHTransport, TransportError

__all__ = ["STANDARD", "LocalTransport", "SSHTransport", "TransportError", "profile_models"]
