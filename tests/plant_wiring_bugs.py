"""Plant each of issue 14's subtle wiring bugs and issue 24's four survivors in turn, run the fast tests
that guard them, print which tests fail, and restore the file. From the repository root:

    python tests/plant_wiring_bugs.py [NAME ...]
    PLANT_TESTS="tests/distributed/test_ddp_moco_keys.py -m slow" python tests/plant_wiring_bugs.py

docs/testing.md holds the last result. Not a test module (pytest collects test_*.py only).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOCO, SHUFFLE = "methods/mocov1.py", "sslkit/contrastive/shuffle_bn.py"
KEY = "F.normalize(self.head_k(self.backbone_k(x)), dim=1)"
Edit = tuple[str, str, str]  # file, text, replacement
BUGS: dict[str, list[Edit]] = {
    "infonce_positive_detached": [("sslkit/contrastive/infonce.py", "pos = (q * k).sum(dim=1, keepdim=True)",
                                   "pos = (q * k).sum(dim=1, keepdim=True).detach()")],
    "key_head_left_out_of_ema": [(MOCO, "        ema_update(self.head_k, self.head, m)\n", "")],
    "split_keys_in_shuffled_order(helper)": [(SHUFFLE, "    return x[inverse]\n", "    return x\n")],
    "split_keys_in_shuffled_order(method)": [(MOCO, f"return unshuffle_local({KEY}, inverse)", f"return {KEY}")],
    "split_never_shuffles(helper)": [(SHUFFLE, "    return x[perm], torch.argsort(perm)",
                                      "    return x, torch.arange(x.shape[0], device=x.device)")],
    "split_never_shuffles(method)": [(MOCO, "x, inverse = shuffle_local(x)", "inverse = torch.arange(x.shape[0])")],
    "ddp_keys_in_shuffled_order(helper)": [(SHUFFLE, "    return gathered[local]\n", "    return x\n")],
    "ddp_keys_in_shuffled_order(method)": [(MOCO, f"return unshuffle_ddp({KEY}, inverse)", f"return {KEY}")],
    "ddp_never_shuffles(helper)": [(SHUFFLE, "    return gathered[local], inverse\n",
                                    "    return x, torch.arange(gathered.shape[0])\n")],
    "ddp_never_shuffles(method)": [(MOCO, "x, inverse = shuffle_ddp(x)",
                                    "inverse = torch.arange(x.shape[0] * world_size())")],
    "momentum_schedule_ignored": [(MOCO, "momentum_at(self.base_momentum, progress, self.momentum_schedule)",
                                   "momentum_at(self.base_momentum, progress)")],
    "protocol_lr_stepped_per_batch": [
        ("evaluation/linear.py", "                opt.step()\n",
         "                opt.step()\n                assert sched is not None\n                sched.step()\n"),
        ("evaluation/linear.py", "            if sched is not None:\n                sched.step()\n", "")],
    "set_epoch_0": [("sslkit/engine/loop.py", "self.sampler.start_epoch(s.epoch, s.batch_in_epoch)",
                     "self.sampler.start_epoch(0, s.batch_in_epoch)")],
    # issue 24: what persists across steps, calls and runs
    "lars_dampening": [("sslkit/engine/lars.py", 'state["momentum_buffer"].mul_(group["momentum"]).add_(grad)',
                        'state["momentum_buffer"].mul_(group["momentum"]).add_(grad, alpha=1 - group["momentum"])')],
    "signal_handlers_not_restored": [
        ("sslkit/engine/signals.py",
         "        for s, handler in previous.items():\n            signal.signal(s, handler)\n", "        pass\n")],
    "fast_probe_cosine_in_epochs": [("evaluation/linear.py", "CosineAnnealingLR(opt, settings.epochs * len(starts))",
                                     "CosineAnnealingLR(opt, settings.epochs)")],
    "cache_key_without_subset_seed": [
        ("evaluation/features.py",
         '        "subset_seed": None if subset is None else int(data.get("subset_seed") or 0),\n', "")],
}
TESTS = ["tests/contrastive", "tests/methods/test_moco.py", "tests/methods/test_moco_wiring.py",
         "tests/methods/test_simclr.py", "tests/engine/test_loop_wiring.py",
         "tests/evaluation/test_linear_protocol_wiring.py", "tests/evaluation/test_linear_eval.py"]
# issue 24's bugs: the fast tests of the touched module (all of them are in `make test`)
TESTS_OF = {
    "lars_dampening": ["tests/engine/test_optimiser_steps.py", "tests/engine/test_optim_schedule.py"],
    "signal_handlers_not_restored": ["tests/engine/test_process_state.py", "tests/engine/test_loop_wiring.py"],
    "fast_probe_cosine_in_epochs": ["tests/evaluation/test_probe_lr.py", "tests/evaluation/test_linear_eval.py"],
    "cache_key_without_subset_seed": ["tests/evaluation/test_cache_key.py", "tests/evaluation/test_eval_features.py"],
}


def main(names: list[str]) -> int:
    chosen = os.environ["PLANT_TESTS"].split() if os.environ.get("PLANT_TESTS") else None
    caught_all = True
    for name, edits in BUGS.items():
        if names and name not in names:
            continue
        tests = chosen or TESTS_OF.get(name, TESTS)
        saved: dict[Path, str] = {}
        try:
            for path, old, new in edits:
                file = ROOT / path
                saved.setdefault(file, file.read_text())
                text = file.read_text()
                assert text.count(old) == 1, f"{name}: '{old}' is not in {path} exactly once"
                file.write_text(text.replace(old, new))
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "--no-header", "-rf", *tests], cwd=ROOT,
                                 capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        finally:
            for file, text in saved.items():
                file.write_text(text)
        failed = [f.split("/")[-1] for f in re.findall(r"^FAILED (\S+)", res.stdout, re.M)]
        caught_all &= bool(failed)
        print(f"{name}: {len(failed)} failed: {', '.join(failed) or 'NOT CAUGHT'}", flush=True)
    return 0 if caught_all else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
