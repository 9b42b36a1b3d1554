"""Survivors that are equivalent mutants: the mutated module computes the same for every input it accepts.

A reason that starts with "CUDA only" or "multi-process only" marks a mutant that is not equivalent but
can only be killed on a GPU or by the slow multi-process tests (`make test-slow`): the report counts
those apart too. Each rule is (module or "*" for any; a fragment of the original source line, or with a
newline, of it and the next line; a regex on the operator's name; why).
`mutation/run.py --report` counts the survivors a rule matches apart from the others. A rule names the
source text, not a line number, so it follows the line when code moves; re-check it when the line changes.
"""

from __future__ import annotations

import re

TWO_D = "the tensor is 2-D ((N, D) by contract), so dim -1 and dim 1 are the same axis"
RULES: list[tuple[str, str, str, str]] = [
    # anywhere
    ("*", "strict=True", "TrueWithFalse",
     "the zipped sequences have equal lengths by construction: strict only turns a future bug into an error"),
    # engine
    ("sslkit/engine/lars.py", "trust = torch.where((w_norm > 0) & (g_norm > 0),", "BitAnd_Mul|Gt_NotEq|g_norm >=",
     "norms are never negative, and a logical and of booleans is their product"),
    ("sslkit/engine/lars.py", "trust = torch.where((w_norm > 0) & (g_norm > 0),", "Gt_GtE|NumberReplacer",
     "for a zero gradient the step is zero whatever finite trust multiplies it (eps keeps it finite)"),
    ("sslkit/engine/loop.py", "if self.model is i.method and i.world.size > 1:", "Gt_NotEq",
     "the world size is never below 1"),
    ("sslkit/engine/loop.py", "if self.model is i.method and i.world.size > 1:", "Gt_LtE|Gt_Lt$|NumberReplacer|AddNot",
     "multi-process only: one process averages its gradients with itself (tests/distributed)"),
    ("sslkit/engine/loop.py", "if i.world.size > 1:  # log (and NaN-check) the mean", "Gt_NotEq",
     "the world size is never below 1"),
    ("sslkit/engine/loop.py", "if i.world.size > 1:  # log (and NaN-check) the mean", "Gt_LtE|Gt_Lt$|NumberReplacer",
     "multi-process only: one process's mean over ranks is its own value (tests/distributed)"),
    ("sslkit/engine/loop.py", "if self.model is i.method and i.world.size > 1:", "AndWithOr",
     "multi-process only: one process's all-reduce of its gradients is the identity (tests/distributed)"),
    ("sslkit/engine/loop.py", "if i.world.size > 1:  # log (and NaN-check) the mean", "Gt_Eq",
     "multi-process only: one process's mean over ranks is its own value (tests/distributed)"),
    ("sslkit/engine/loop.py", "if i.world.size > 1:\nstates: list[Any] | None", ".",
     "multi-process only: the ranks' RNG states are gathered only under torchrun (tests/distributed)"),
    ("sslkit/engine/loop.py", "states: list[Any] | None = [None] * i.world.size", ".",
     "multi-process only: the ranks' RNG states are gathered only under torchrun (tests/distributed)"),
    ("sslkit/engine/loop.py", "if self.i.world.size > 1:", "Gt_NotEq", "the world size is never below 1"),
    ("sslkit/engine/loop.py", 'if precision == "fp16" and device.type == "cuda":', ".",
     "CUDA only: fp16 autocast runs on CUDA only"),
    ("methods/simclr.py", "offset=rank() * z1.shape[0])", ".",
     "multi-process only: rank 0's offset is 0 whatever multiplies it (tests/distributed/test_ddp_simclr.py)"),
    ("methods/simclr.py", "chunk_size: int | None, world_size: int = 1) -> None:", "NumberReplacer",
     "multi-process only: the app always passes the world size (tests/distributed)"),
    ("methods/mocov1.py", "split_bn_groups: int, world_size: int = 1) -> None:", "NumberReplacer",
     "multi-process only: the app always passes the world size (tests/distributed)"),
    ("sslkit/engine/parallel.py", "", ".",
     "multi-process only: DistributedDataParallel wrapping (tests/distributed, make test-slow)"),
    ("sslkit/engine/distributed.py", "", ".",
     "multi-process only: process-group set-up and teardown under torchrun (tests/distributed, make test-slow)"),
    ("sslkit/engine/state.py", 'if scaler is not None and checkpoint.get("scaler") is not None:', ".",
     "CUDA only: the fp16 GradScaler's state"),
    ("sslkit/engine/loop.py", "if self.model is i.method and i.world.size > 1:", "Is_Eq",
     "modules compare by identity"),
    ("sslkit/engine/loop.py", 'extra = {**extra, "rng_ranks": states}', ".",
     "multi-process only: the ranks' RNG states are gathered only under torchrun (tests/distributed)"),
    ("methods/simclr.py", "if self.gather_distributed and self.world_size > 1:", "Gt_NotEq",
     "the world size is never below 1"),
    ("sslkit/engine/optim.py", "if name.startswith(r.prefix)), -1)", "NumberReplacer",
     "any negative index means no rule: every use checks rule >= 0, and the buckets sort the same"),
    ("sslkit/engine/optim.py", 'cfg.get("exclude_bias_and_norm", name != "sgd")', "NotEq_",
     "the name is one of sgd, lars, adamw (checked above): lars and adamw sort before sgd"),
    ("sslkit/engine/signals.py", "threading.current_thread() is not threading.main_thread()", "IsNot_NotEq",
     "threads compare by identity"),
    # data
    ("sslkit/data/subset.py", "if n >= total:", "GtE_Eq|GtE_Gt",
     "with n >= total the general path also keeps every item of every class: the same arange"),
    ("sslkit/data/subset.py", "if n <= 0:", "LtE_Lt|NumberReplacer",
     "n = 0 gives zero quotas and the same empty index tensor"),
    # evaluation
    ("evaluation/features.py", "batch_size: int = 512,", "NumberReplacer",
     "eval-mode features do not depend on how the images are batched"),
    ("evaluation/features.py", 'int(data.get("subset_seed") or 0)', "NumberReplacer",
     "None and 0 map to one key either way"),
    # contrastive
    ("sslkit/contrastive/infonce.py", "argmax(1) == 0", "Eq_LtE", "an argmax is never negative: <= 0 is == 0"),
    ("sslkit/contrastive/queue.py", "n_images // 4", "FloorDiv_Div",
     "floor(log2(x)) = floor(log2(floor(x))) for x >= 1 (powers of 2 are integers), and max(1, .) holds x >= 1"),
    ("sslkit/contrastive/queue.py", "return 1 << max(0,", "NumberReplacer",
     "log2 of max(1, .) is >= 0, so the max with 0 (or -1) never acts"),
    ("sslkit/contrastive/queue.py", "@torch.no_grad()", "RemoveDecorator",
     "push detaches the keys and writes buffers that take no graph"),
    ("sslkit/contrastive/queue.py", "(start + n - self.size) % self.size", "Sub_Add|Mod_Add|Mod_Sub",
     "the start is only used modulo K afterwards; +-K changes nothing modulo K"),
    ("sslkit/contrastive/ntxent_blockwise.py", "@staticmethod", "RemoveDecorator",
     "autograd.Function calls forward/backward on the class: a plain function there gets the same arguments"),
    # methods
    ("methods/base.py", "with torch.autocast(device_type=tensors[0].device.type", "NumberReplacer",
     "the tensors of one loss are on one device"),
    ("methods/base.py", "custom_backward: bool = False", "FalseWithTrue",
     "multi-process only: it chooses hand-synced gradients over DistributedDataParallel (tests/distributed)"),
    ("methods/base.py", "out.backward_done = self._backward_calls > 0", "Gt_NotEq", "a count is never negative"),
    ("methods/base.py", "yield out[0] if len(out) == 1 else out", "NumberReplacer", "out has one element there"),
    ("methods/base.py", "backward_done: bool = field(default=False, init=False)", "FalseWithTrue",
     "an extra keyword with the same default that no caller passes"),
    ("methods/base.py", "self._backward_calls = 0", "NumberReplacer", "forward resets it before every step"),
    ("methods/base.py", "yield out[0] if len(out) == 1 else out", "Eq_LtE", "there is at least one tensor"),
    ("methods/base.py", "self._backward_calls += 1", "NumberReplacer", "the count is only compared with 0"),
    ("sslkit/contrastive/grad_cache.py", 'if device.type == "cuda" else None', "Eq_",
     "CUDA only: on a CPU the comparison is false either way (\"cpu\" sorts before \"cuda\")"),
    ("sslkit/contrastive/grad_cache.py", "torch.cuda.set_rng_state(state[1], device)", ".",
     "CUDA only: the CUDA generator's state"),
    ("sslkit/contrastive/shuffle_bn.py", "broadcast_(perm, src=0)", ".",
     "multi-process only: one process broadcasts to itself (tests/distributed/test_ddp_shuffle_bn.py)"),
    # losses
    ("sslkit/losses/negative_cosine.py", "F.normalize(p, dim=-1)", "USub", TWO_D),
    ("sslkit/losses/dino.py", "F.log_softmax(s / student_temp, dim=-1)", "USub", TWO_D),
    ("sslkit/losses/dino.py", ".sum(dim=-1).mean(dim=-1).sum()", "USub",
     "after the sum over prototypes the tensor is (crops, N), 2-D: dim -1 and 1 are the same axis"),
    ("sslkit/losses/dino.py", "if warmup_epochs == 1:", "Eq_LtE",
     "warmup_epochs <= 0 returns earlier (epoch >= warmup_epochs) for any epoch >= 0; for epoch < 0 both give start"),
    ("sslkit/losses/sinkhorn.py", "if world_size() > 1:", "Gt_NotEq", "the world size is never below 1"),
    ("sslkit/losses/sinkhorn.py", "k, b = q.shape[0], q.shape[1] * world_size()", ".",
     "K only scales the rows before the columns are normalised, and B divides and then multiplies the codes "
     "back (q /= b, then q *= b): the codes do not depend on either (the official code's steps, kept)"),
    ("sslkit/losses/sinkhorn.py", "q /= q.sum(dim=0, keepdim=True)", "TrueWithFalse",
     "q is (K, B): a (B,) sum broadcasts over the last axis exactly as the (1, B) one"),
    ("sslkit/contrastive/shuffle_bn.py", "@torch.no_grad()\ndef shuffle_ddp", "RemoveDecorator",
     "it shuffles images, which carry no graph, through a gather that is not differentiable"),
    ("sslkit/contrastive/shuffle_bn.py", "@torch.no_grad()\ndef unshuffle_ddp", "RemoveDecorator",
     "it only gathers and indexes the keys, which the key encoder computed without a graph"),
    ("sslkit/losses/swav.py", "F.log_softmax(scores / temperature, dim=-1)).sum(dim=-1)", "USub", TWO_D),
    ("sslkit/losses/swav.py", "total = crops[0].new_zeros(())", "NumberReplacer",
     "every crop has the same dtype and device: a zero from any of them is the same"),
    ("sslkit/nn/dino_head.py", "F.normalize(self.mlp(x), dim=-1)", "USub", TWO_D),
    ("sslkit/nn/dino_head.py", "for _ in range(max(num_layers, 1) - 1)]", "NumberReplacer",
     "range(-1) and range(0) are both empty"),
    ("sslkit/nn/prototypes.py", "F.normalize(z, dim=-1)", "USub", TWO_D),
    ("sslkit/nn/split_bn.py", "save_invstd = x.new_empty(c * groups", ".",
     "native_batch_norm.out resizes its out= tensors to (C x G) whatever they were"),
    ("sslkit/nn/split_bn.py", "save_mean = x.new_empty(c * groups", ".",
     "native_batch_norm.out resizes its out= tensors to (C x G) whatever they were"),
    ("sslkit/nn/split_bn.py", "if running_mean is not None and means is not None and running_var", "AndWithOr",
     "BatchNorm has both running statistics or neither, and `means` / `vars_` exist exactly when they do"),
    ("sslkit/nn/split_bn.py", "if not self.training or g <= 1 or", "NumberReplacer",
     "one group is the whole batch: the split path computes plain batch norm"),
    ("sslkit/nn/split_bn.py", "momentum = 0.0 if momentum is None else momentum", "NumberReplacer",
     "momentum is None here only without running statistics, where it is never used"),
    ("sslkit/nn/split_bn.py", "if n % g == 0:", "Mod_",
     "the short-batch path computes the same per-group statistics one group at a time (slower, same values)"),
    ("sslkit/nn/multicrop.py", "while start < len(views):", "Lt_NotEq", "start only grows, by at least 1, up to len"),
    ("sslkit/nn/multicrop.py", "while end < len(views) and", "Lt_NotEq", "end only grows, by 1, up to len"),
    ("sslkit/nn/multicrop.py", "views[end].shape[-2:] == views[start].shape[-2:]", "USub",
     "views are (B, C, H, W) by contract: shape[2:] is shape[-2:]"),
    ("sslkit/contrastive/shuffle_bn.py", "@torch.no_grad()\ndef unshuffle_local", "RemoveDecorator",
     "it only indexes the keys, which the key encoder computed without a graph"),
]


def why(module: str, source_line: str, operator: str) -> str | None:
    """The reason a survivor is equivalent, or None if no rule covers it."""
    for mod, fragment, pattern, reason in RULES:
        if mod in (module, "*") and fragment in source_line and re.search(pattern, operator):
            return reason
    return None
