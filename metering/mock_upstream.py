"""The mock upstream's old import path; the code lives in the `metering.mock` package."""

from metering.mock import *  # noqa: F403
from metering.mock import __all__  # noqa: F401
