"""Print `sslkit eval detect` results (<dir>/detect.json for each argument) as one markdown table."""

import json
import sys
from pathlib import Path

import torch

print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
print("| init | AP50 | AP | AP75 | fine-tune steps x batch | fine-tune s | eval s | pretrain-in-eval s |")
print("|---|---|---|---|---|---|---|---|")
for d in sys.argv[1:]:
    r = json.loads((Path(d) / "detect.json").read_text())
    name = Path(r["checkpoint"]).parent.parent.name if r["checkpoint"] else r["init"]
    t = r["timing"]
    steps = f"{r['steps']} x {r['settings']['batch_size']}"
    print(f"| {name} | {r['AP50']:.1f} | {r['AP']:.1f} | {r['AP75']:.1f} | {steps} "
          f"| {t['train']:.0f} | {t['eval']:.0f} | {t['pretrain']:.0f} |")
