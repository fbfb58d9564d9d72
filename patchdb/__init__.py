"""patchdb: patch databases and the closed-form ELS machines of Kamb & Ganguli."""

from .errors import PatchdbError
from .schedule import PRESETS, ScaleSchedule, alpha_sigma, parse_schedule
from .score import ExactMachine, denoise
from .spec import Machine

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ExactMachine",
    "Machine",
    "PatchdbError",
    "ScaleSchedule",
    "alpha_sigma",
    "denoise",
    "parse_schedule",
]
