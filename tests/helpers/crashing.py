"""Learners that fail on purpose, enabled through ``plugins.enable`` (``helpers.crashing:PLUGINS``)
so that a training process, which builds its registry from the configuration, has them too.

``raising`` raises in ``fit``; ``exiting`` ends the process it trains in, as a crash (or the
kernel's out-of-memory killer) would. Both serve like the ``linear`` learner otherwise.
"""

from __future__ import annotations

import os
from typing import Any

from agentrt.learning.data import BanditData
from agentrt.learning.linear import LinearLearner, LinearModel
from agentrt.plugins import Plugin

# Shown in the cycle's reason when `raising` fails.
MESSAGE = "planted failure in fit"


class RaisingLearner(LinearLearner):
    def fit(self, data: BanditData) -> tuple[LinearModel, dict[str, Any]]:
        raise ValueError(MESSAGE)


class ExitingLearner(LinearLearner):
    def fit(self, data: BanditData) -> tuple[LinearModel, dict[str, Any]]:
        os._exit(3)


PLUGINS = [
    Plugin("learner", "raising", RaisingLearner, "fails in fit"),
    Plugin("learner", "exiting", ExitingLearner, "ends its process in fit"),
]
