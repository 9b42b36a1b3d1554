"""A method's declaration of parameter groups, read by the engine's optimizer builder.

A part, not engine code: methods declare their rules (`SSLMethod.param_rules`) without importing the
engine, and `sslkit.engine.optim.param_groups` turns them into optimizer groups.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamRule:
    """Parameters whose name starts with `prefix` (e.g. "predictor"): their learning rate is `lr_scale` x
    the scheduled one, or held at its start value when `fixed_lr` (SimSiam's predictor, arXiv 2011.10566
    Sec. 4.2 / `--fix-pred-lr`), and `weight_decay=False` takes them out of decay. The first rule whose
    prefix matches wins.

    >>> ParamRule("predictor", fixed_lr=True)
    ParamRule(prefix='predictor', lr_scale=1.0, fixed_lr=True, weight_decay=True)
    """

    prefix: str
    lr_scale: float = 1.0
    fixed_lr: bool = False
    weight_decay: bool = True
