"""Batched backend: the recipe applied to a whole NCHW batch at once, with per-sample random parameters.

It samples the same distribution as `per_image_transform` (torchvision.transforms.v2), op by op:
RandomResizedCrop's 10-attempt rejection sampler, ColorJitter's factor ranges and random op order,
RandomGrayscale, GaussianBlur's sigma ~ U[lo, hi], RandomHorizontalFlip, RandomSolarize. Nothing loops over samples:
every draw is a tensor of shape (N, ...) and every op runs on the batch or on a masked subset.
The jitter's random order is applied position by position: at each of the 4 positions, each op runs
on the subset of samples whose permutation puts it there (16 masked calls, whatever N).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from sslkit.augment import color
from sslkit.augment.recipe import AugRecipe

CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop.make_params
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # torchvision ColorJitter fn_idx 0..3


def jitter_ranges(jitter: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """torchvision ColorJitter._check_input: [max(0, 1 - v), 1 + v] for b/c/s, [-h, h] for hue."""
    b, c, s, h = jitter
    return [(max(0.0, 1.0 - b), 1.0 + b), (max(0.0, 1.0 - c), 1.0 + c), (max(0.0, 1.0 - s), 1.0 + s), (-h, h)]


def resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, dtype: torch.dtype
                   ) -> Tensor:
    """(N, out_size, in_size) matrices M with M @ row = the crop [start, start + length) resized to out_size.

    The rows reproduce PyTorch's antialiased bilinear resampling (`interpolate(..., antialias=True)`,
    which torchvision's resize uses): output pixel k is centred at c = scale (k + 0.5) in crop
    coordinates, scale = length / out_size, and input pixel p gets the triangle weight
    max(0, 1 - |p + 0.5 - c| / max(scale, 1)), normalised over the pixels *inside the crop*. When
    upscaling (scale <= 1) this is plain bilinear with edge clamping (align_corners=False); when
    downscaling the triangle widens to `scale` input pixels, i.e. the antialiasing filter. Restricting
    the support to the crop is what crop-then-resize does, which roi_align/grid_sample would not (they
    blend in pixels beyond the crop edge) -- so a dense matrix product is exact, and at the small
    image sizes of in-memory datasets it is also the cheapest way to resample a batch.
    """
    start = start.to(dtype).view(-1, 1, 1)
    length = length.to(dtype).view(-1, 1, 1)
    device = start.device
    scale = length / out_size
    support = scale.clamp(min=1.0)
    centre = scale * (torch.arange(out_size, dtype=dtype, device=device).view(1, -1, 1) + 0.5)
    rel = torch.arange(in_size, dtype=dtype, device=device).view(1, 1, -1) - start  # pixel index in the crop
    weights = (1.0 - ((rel + 0.5 - centre) / support).abs()).clamp_(min=0.0)
    weights = weights * ((rel >= 0) & (rel < length))
    return weights / weights.sum(dim=-1, keepdim=True)


def fixed_point_weights(weights: Tensor) -> tuple[Tensor, Tensor]:
    """PyTorch's uint8 resize weights: round(w * 2^p) with the largest p < 22 such that 2 * max(w) * 2^p
    rounds below 2^15 (int16), per sample; returns (integer-valued weights, 2^p as an (N, 1, 1) tensor)."""
    max_w = weights.amax(dim=(1, 2), keepdim=True)
    q = torch.arange(22, dtype=weights.dtype, device=weights.device)
    precision = (torch.floor(0.5 + max_w * 2.0 ** (q + 1)) < 2 ** 15).sum(dim=-1, keepdim=True)
    scale = 2.0 ** precision.to(weights.dtype)
    return torch.floor(0.5 + weights * scale), scale


def _fixed_point_round(acc: Tensor, scale: Tensor) -> Tensor:
    """(acc + 2^(p-1)) >> p, saturated to 0..255 (exact: acc is an integer, 2^p a power of two)."""
    scale = scale.to(acc.dtype)
    return torch.floor((acc + 0.5 * scale) / scale).clamp_(0.0, 255.0)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """(N, k) normalised 1-D kernels exp(-t^2 / 2 sigma^2), t = -(k-1)/2 .. (k-1)/2 (torchvision's kernel)."""
    t = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - (kernel_size - 1) / 2
    return torch.softmax(-(t.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1) ** 2), dim=-1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable per-sample Gaussian blur with reflect padding (as torchvision's gaussian_blur)."""
    kernels = gaussian_kernels(sigma.to(x.dtype), kernel_size)
    pad = kernel_size // 2
    n, c, h, w = x.shape
    # Horizontal then vertical pass as sums of k shifted copies: per-sample weights, no Python loop
    # over samples (k is 3 for 32 px images, 23 for 224 px).
    xp = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    out = sum(kernels[:, t].view(n, 1, 1, 1) * xp[..., t:t + w] for t in range(kernel_size))
    yp = F.pad(out, (0, 0, pad, pad), mode="reflect")  # type: ignore[arg-type]
    return sum(kernels[:, t].view(n, 1, 1, 1) * yp[..., t:t + h, :] for t in range(kernel_size))  # type: ignore[return-value]


class BatchedAugment(torch.nn.Module):
    """One augmented view of every image of a batch, with independent parameters per sample.

    `forward(images)` takes uint8 (0..255) or float ([0, 1]) NCHW images on any device and returns
    normalized float32 (or the input float dtype) N x 3 x S x S views, S = recipe.image_size. Each
    view equals torchvision's v2 pipeline applied to that image, in that dtype, with the parameters
    of `sample_params`: float to ~1e-6; uint8 including its rounding (fixed-point resize, truncation
    after each colour op), with one grey level of difference on about one pixel in 10^5.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, recipe: AugRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.ranges = jitter_ranges(recipe.jitter)
        # ColorJitter skips an op whose range is the identity ({1} for b/c/s, {0} for hue).
        self.active = [lo != hi for lo, hi in self.ranges]
        self.register_buffer("mean", torch.tensor(recipe.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(recipe.std).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return repr(self.recipe)

    def sample_params(self, n: int, height: int, width: int, generator: torch.Generator | None = None
                      ) -> dict[str, Tensor]:
        """Per-sample parameters for `n` images of height x width (on the generator's device, CPU by default).

        crop (torchvision RandomResizedCrop): i, j, h, w (long); jitter (ColorJitter under RandomApply):
        `jitter` mask, brightness/contrast/saturation/hue factors, `order` (N, 4) a permutation of op ids
        0..3 per sample; `gray`, `blur`, `flip` masks; `sigma` of the blur; `solarize` mask (drawn last,
        so the other parameters of a seed do not depend on it). Every parameter is drawn for
        every sample, whether or not its op applies, so a seeded generator gives a fixed stream.
        """
        r = self.recipe
        dev = generator.device if generator is not None else torch.device("cpu")

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, device=dev, dtype=torch.float64)

        # RandomResizedCrop: 10 attempts at once; the first accepted attempt wins.
        area = float(height * width)
        target = area * (r.crop_scale[0] + (r.crop_scale[1] - r.crop_scale[0]) * rand(n, CROP_ATTEMPTS))
        lr0, lr1 = r.log_ratio
        aspect = torch.exp(lr0 + (lr1 - lr0) * rand(n, CROP_ATTEMPTS))
        w_try = torch.round(torch.sqrt(target * aspect))  # round half to even, like Python's round()
        h_try = torch.round(torch.sqrt(target / aspect))
        ok = (w_try > 0) & (w_try <= width) & (h_try > 0) & (h_try <= height)
        first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first True (0 when none)
        found = ok.any(dim=1)
        w = w_try.gather(1, first).squeeze(1).long()
        h = h_try.gather(1, first).squeeze(1).long()
        u_i, u_j = rand(n), rand(n)
        i = torch.minimum((u_i * (height - h + 1)).floor().long(), height - h)  # randint(0, H - h + 1)
        j = torch.minimum((u_j * (width - w + 1)).floor().long(), width - w)
        fh, fw = _fallback_crop(height, width, r.crop_ratio)
        h = torch.where(found, h, fh)
        w = torch.where(found, w, fw)
        i = torch.where(found, i, (height - fh) // 2)
        j = torch.where(found, j, (width - fw) // 2)

        params = {"i": i, "j": j, "h": h, "w": w, "jitter": rand(n) < r.jitter_p}
        u = rand(n, 4)
        for name, (lo, hi), k in zip(JITTER_OPS, self.ranges, range(4), strict=True):
            params[name] = (lo + (hi - lo) * u[:, k]).float()
        params["order"] = torch.argsort(rand(n, 4), dim=1)  # a uniform random permutation per sample
        params["gray"] = rand(n) < r.gray_p
        params["blur"] = rand(n) < r.blur_p
        params["sigma"] = (r.blur_sigma[0] + (r.blur_sigma[1] - r.blur_sigma[0]) * rand(n)).float()
        params["flip"] = rand(n) < r.flip_p
        params["solarize"] = rand(n) < r.solarize_p
        return params

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1|3, H, W) images, got {tuple(images.shape)}")
        # uint8 input is processed as the integers 0..255 and rounded/truncated after each op exactly
        # where torchvision's uint8 kernels are; float input stays in [0, 1] like its float kernels.
        uint8 = not images.is_floating_point()
        if images.shape[1] == 3 and bool((images[:, 0] == images[:, 1]).all() & (images[:, 0] == images[:, 2]).all()):
            images = images[:, :1]  # grey images (e.g. Fashion-MNIST repeated to RGB): one channel is enough
        x = images.float() if uint8 else images
        grey = x.shape[1] == 1  # every op keeps R = G = B, so one channel gives the same numbers 3x faster
        n, _, height, width = x.shape
        p = {k: v.to(x.device, non_blocking=True)
             for k, v in self.sample_params(n, height, width, generator).items()}
        x = self._crop_flip(x, p, uint8)
        gray_first = self.recipe.order == "gray_first"
        if self.recipe.gray_p > 0 and gray_first:
            x = torch.where(p["gray"].view(-1, 1, 1, 1), color.grayscale(x, uint8).expand_as(x), x)
        if self.recipe.jitter_p > 0 and any(self.active):
            x = self._jitter(x, p, uint8, grey)
        if self.recipe.gray_p > 0 and not gray_first:
            x = torch.where(p["gray"].view(-1, 1, 1, 1), color.grayscale(x, uint8).expand_as(x), x)
        if self.recipe.blur_p > 0:
            idx = p["blur"].nonzero().squeeze(1)
            if idx.numel():
                blurred = gaussian_blur(x[idx], p["sigma"][idx], self.recipe.blur_kernel_size)
                x = x.index_copy(0, idx, blurred.round_() if uint8 else blurred)
        if self.recipe.solarize_p > 0:
            x = solarize(x, p["solarize"], uint8)
        if uint8:
            x = x * (1.0 / 255.0)
        return (x.expand(-1, 3, -1, -1) - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def _crop_flip(self, x: Tensor, p: dict[str, Tensor], uint8: bool) -> Tensor:
        """Crop + resize as two batched matrix products; the flip reverses the rows of the x-matrix.

        Flipping here instead of last is exact: jitter, grayscale and the symmetric blur with reflect
        padding all commute with a horizontal mirror. The horizontal pass comes first, as in PyTorch's
        separable resize; for uint8 input both passes use its 16-bit fixed-point weights and rounding.
        """
        size = self.recipe.image_size
        n, c, height, width = x.shape
        # In uint8 mode the sums are integers below 255 * 2^15 (exact in float32) while the crop is at
        # most 2x the output; beyond that float64 keeps them exact.
        dtype = x.dtype if not uint8 or max(height, width) <= 2 * size else torch.float64
        wdtype = torch.float64 if uint8 else x.dtype
        wy = resize_weights(p["i"], p["h"], height, size, wdtype)  # (N, S, H)
        wx = resize_weights(p["j"], p["w"], width, size, wdtype)  # (N, S, W)
        if self.recipe.flip_p > 0:
            wx = torch.where(p["flip"].view(-1, 1, 1), wx.flip(1), wx)
        if uint8:
            (wx, shift_x), (wy, shift_y) = fixed_point_weights(wx), fixed_point_weights(wy)
        wx, wy = wx.to(dtype), wy.to(dtype)
        rows = torch.bmm(x.to(dtype).reshape(n, c * height, width), wx.transpose(1, 2))  # (N, C*H, S)
        if uint8:
            rows = _fixed_point_round(rows, shift_x)
        rows = rows.view(n, c, height, size).transpose(1, 2).reshape(n, height, c * size)
        out = torch.bmm(wy, rows)  # (N, S, C*S)
        if uint8:
            out = _fixed_point_round(out, shift_y)
        return out.view(n, size, c, size).transpose(1, 2).contiguous().to(x.dtype)  # (N, C, S, S)

    def _jitter(self, x: Tensor, p: dict[str, Tensor], uint8: bool, grey: bool = False) -> Tensor:
        """ColorJitter on the samples whose `jitter` mask is set, each with its own op order."""
        idx = p["jitter"].nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        sub = x[idx]
        order = p["order"][idx]
        factors = [p[name][idx] for name in JITTER_OPS]
        ops = (color.adjust_brightness, color.adjust_contrast, color.adjust_saturation, color.adjust_hue)
        for pos in range(4):
            for op in range(4):
                # Hue is the identity on grey pixels (saturation 0), so grey batches skip it.
                if not self.active[op] or (grey and op == 3):
                    continue
                sel = (order[:, pos] == op).nonzero().squeeze(1)
                if sel.numel():
                    sub[sel] = ops[op](sub[sel], factors[op][sel], uint8)
        return x.index_copy(0, idx, sub)


def solarize(x: Tensor, mask: Tensor, uint8: bool) -> Tensor:
    """Invert the pixels >= half the range (128 of 0..255, or 0.5 of [0, 1]) of the samples in `mask`
    (torchvision's `solarize`; BYOL appendix B)."""
    top = 255.0 if uint8 else 1.0
    hit = mask.view(-1, 1, 1, 1) & (x >= (128.0 if uint8 else 0.5))
    return torch.where(hit, top - x, x)


def _fallback_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's central-crop fallback after 10 rejected attempts: the whole image, clamped to `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return h, w
