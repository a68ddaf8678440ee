"""Profile: run models on a target, locally, in the arm64 stand-in or over SSH, and measure latency, load time,
memory, per-op time and placement. The device runner and the transports live in edgeq.targets."""

from edgeq.profile.run import STANDARD, ProfileSettings, profile_models

__all__ = ["STANDARD", "ProfileSettings", "profile_models"]
