"""TRL's ``trl.trainer`` import paths (``from trl.trainer.sft_trainer import DataCollatorForLanguageModeling``), so
those imports port by changing ``trl`` to ``posttrain``. Each module names what posttrain itself exports; the trainers
live in :mod:`posttrain.trainers`."""

from ..trainers import *  # noqa: F401,F403
from ..trainers import __all__  # noqa: F401
