"""TRL 1.x's ``trl.experimental`` import paths (``from trl.experimental.kto import KTOTrainer``), so those imports port
by changing ``trl`` to ``posttrain``. posttrain has no experimental tier: each module here names the trainer that
``posttrain`` itself exports (``posttrain.KTOTrainer`` is ``posttrain.experimental.kto.KTOTrainer``)."""
