"""MoCo v2 (Chen et al. 2020, arXiv 2003.04297): MoCo v1 with an MLP head, tau=0.2, aug+ and cosine lr.

The mechanics are MoCo v1's; every difference is in configs/method/mocov2.yaml, which inherits
mocov1.yaml and states only what differs. Each row of the paper's Table 1 is one command (e.g.
`method=mocov1 head=mlp method.temperature=0.2` is row (a): the paper reports row (a) with tau 0.2,
the best value for the MLP head, Sec. 3).
"""

from __future__ import annotations

from sslkit.methods.mocov1 import MoCoV1
from sslkit.registry import register_method


@register_method("mocov2")
class MoCoV2(MoCoV1):
    """MoCo v1 with MoCo v2's defaults: 2-layer MLP head (hidden = feature dim, ReLU) and tau=0.2."""

    paper = "Chen et al. 2020, arXiv 2003.04297"
