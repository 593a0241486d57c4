"""A parallelism planner checked against measured runs (chapter 4): hardware profiles
(:mod:`.hardware`), model shapes (:mod:`.models`), memory per rank (:mod:`.memory`), step
time (:mod:`.time`), the search (:mod:`.search`) and the check against this machine's runs
(:mod:`.validate`)."""

from .hardware import PROFILE_NAMES, PROFILES, Hardware, profile  # noqa: F401
from .memory import Config, memory_per_rank, state_bytes  # noqa: F401
from .models import ModelShape, book_shape, gpt_shape  # noqa: F401
from .search import Candidate, format_plan, plan, reason  # noqa: F401
from .time import step_time  # noqa: F401
