"""Profile: run one model on a device and measure latency, load time, memory, per-op time and placement."""

from edgeq.profile.local import profile_local

__all__ = ["profile_local"]
