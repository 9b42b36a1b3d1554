"""Built-in methods; importing this package registers them."""

from sslkit.methods.barlow_twins import BarlowTwins
from sslkit.methods.base import ContrastiveMethod, SSLMethod, StepOutput
from sslkit.methods.byol import BYOL
from sslkit.methods.dino import DINO
from sslkit.methods.mocov1 import MoCoV1
from sslkit.methods.mocov2 import MoCoV2
from sslkit.methods.simclr import SimCLR
from sslkit.methods.simsiam import SimSiam
from sslkit.methods.swav import SwAV
from sslkit.methods.vicreg import VICReg

__all__ = ["SSLMethod", "ContrastiveMethod", "StepOutput", "MoCoV1", "MoCoV2", "SimCLR", "BYOL", "SimSiam",
           "BarlowTwins", "VICReg", "DINO", "SwAV"]
