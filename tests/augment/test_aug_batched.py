"""BatchedAugment: ranges of the sampled parameters; each op against torchvision.transforms.v2.functional."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslkit.augment import (
    AugRecipe,
    BatchedAugment,
    batch_eval_preprocess,
    eval_transform,
)

# Everything off, crop = the whole image, no normalisation: each test switches on what it checks.
IDENTITY = AugRecipe(image_size=24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=(0.0, 0.0, 0.0, 0.0),
                     jitter_p=0.0, gray_p=0.0, blur_p=0.0, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1,
                     flip_p=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
MOCOV2 = AugRecipe(image_size=32, crop_scale=(0.2, 1.0), crop_ratio=(0.75, 4 / 3),
                   jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0),
                   blur_kernel_frac=0.1, flip_p=0.5, mean=(0.286, 0.286, 0.286), std=(0.353, 0.353, 0.353))
SIMCLR = replace(MOCOV2, crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2))
N = 10_000



def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int, h: int = 24, w: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images in [0, 1] (float), so that every op changes them visibly."""
    low = torch.rand(n, 3, max(2, h // 4), max(2, w // 4), generator=gen(seed))
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


def binomial_ok(mask: torch.Tensor, p: float) -> bool:
    n = mask.numel()
    return abs(mask.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


# ----------------------------------------------------------------------------- sampled parameters

@pytest.mark.parametrize("recipe", [MOCOV2, SIMCLR], ids=["mocov2", "simclr"])
def test_crop_parameters_stay_in_range(recipe):
    H, W = 28, 36
    p = BatchedAugment(recipe).sample_params(N, H, W, gen())
    i, j, h, w = p["i"], p["j"], p["h"], p["w"]
    assert ((h >= 1) & (h <= H) & (w >= 1) & (w <= W)).all()
    assert ((i >= 0) & (i + h <= H) & (j >= 0) & (j + w <= W)).all()
    # w = round(sqrt(A r)), h = round(sqrt(A / r)) with A = scale * H * W, so |w h - A| <= sqrt(A) c / 2
    # + 1/4, c = max(sqrt(r) + 1 / sqrt(r)) over the ratio range; w / h = r up to the same roundings.
    lo, hi = recipe.crop_scale
    r_lo, r_hi = recipe.crop_ratio
    c = max(math.sqrt(r) + 1 / math.sqrt(r) for r in (r_lo, r_hi))
    area = (h * w).double()
    a_lo, a_hi = lo * H * W, hi * H * W
    assert (area >= a_lo - math.sqrt(a_lo) * c / 2).all()
    assert (area <= a_hi + math.sqrt(a_hi) * c / 2 + 0.25).all()
    aspect = w.double() / h.double()
    side = math.sqrt(a_lo / r_hi)  # the shortest possible side before rounding
    slack = (1 + 0.5 / side) / (1 - 0.5 / side)
    assert (aspect >= r_lo / slack).all() and (aspect <= r_hi * slack).all()
    frac = area / (H * W)
    assert frac.min() < lo + 0.03 and frac.max() > hi - 0.05  # the whole range is used
    # the crop position is uniform over the valid offsets: i / (H - h) has mean 1/2 where H > h
    free = h < H
    assert abs((i[free].double() / (H - h[free])).mean().item() - 0.5) < 0.02


def test_crop_sampler_matches_torchvision_make_params():
    H, W = 28, 28
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(32, scale=SIMCLR.crop_scale, ratio=SIMCLR.crop_ratio, antialias=True)
    dummy = torch.zeros(1, H, W)
    tv = [rrc.make_params([dummy]) for _ in range(4000)]
    ours = BatchedAugment(SIMCLR).sample_params(N, H, W, gen())
    for key, name in (("top", "i"), ("left", "j"), ("height", "h"), ("width", "w")):
        ref = torch.tensor([d[key] for d in tv])
        assert ks_2samp(ref.numpy(), ours[name].numpy()).pvalue > 1e-3, key
    # ...and the test sees a different scale range
    other = BatchedAugment(MOCOV2).sample_params(N, H, W, gen())
    ref = torch.tensor([d["height"] * d["width"] for d in tv])
    assert ks_2samp(ref.numpy(), (other["h"] * other["w"]).numpy()).pvalue < 1e-6


def test_crop_fallback_is_torchvisions_centre_crop():
    # A 10x100 strip: every attempt is rejected (h > 10); torchvision falls back to 10 x round(10 * 4/3).
    recipe = replace(MOCOV2, crop_scale=(0.9, 1.0))
    p = BatchedAugment(recipe).sample_params(64, 10, 100, gen())
    assert (p["h"] == 10).all() and (p["w"] == 13).all()
    assert (p["i"] == 0).all() and (p["j"] == (100 - 13) // 2).all()
    rrc = v2.RandomResizedCrop(32, scale=(0.9, 1.0), ratio=recipe.crop_ratio)
    tv = rrc.make_params([torch.zeros(1, 10, 100)])
    assert tv == {"top": 0, "left": 43, "height": 10, "width": 13}


@pytest.mark.parametrize("recipe", [MOCOV2, SIMCLR], ids=["mocov2", "simclr"])
def test_jitter_factors_order_and_masks(recipe):
    p = BatchedAugment(recipe).sample_params(N, 32, 32, gen(1))
    b, c, s, h = recipe.jitter
    for name, (lo, hi) in (("brightness", (1 - b, 1 + b)), ("contrast", (1 - c, 1 + c)),
                           ("saturation", (1 - s, 1 + s)), ("hue", (-h, h))):
        f = p[name]
        assert f.min() >= lo - 1e-6 and f.max() <= hi + 1e-6, name
        assert f.min() < lo + 0.01 * (hi - lo) and f.max() > hi - 0.01 * (hi - lo), name
        assert abs(f.mean().item() - (lo + hi) / 2) < 0.02 * (hi - lo), name
    assert (p["sigma"] >= 0.1).all() and (p["sigma"] <= 2.0).all()
    assert abs(p["sigma"].mean().item() - 1.05) < 0.03
    order = p["order"]
    assert (order.sort(dim=1).values == torch.arange(4)).all()  # a permutation per sample
    perms = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(perms) == 24 and perms.min() > N / 24 * 0.75  # all 24 orders, about equally often
    for key, prob in (("jitter", recipe.jitter_p), ("gray", recipe.gray_p), ("blur", recipe.blur_p),
                      ("flip", recipe.flip_p)):
        assert p[key].dtype == torch.bool and binomial_ok(p[key], prob), key


def test_probability_check_would_catch_a_wrong_p():
    p = BatchedAugment(replace(MOCOV2, gray_p=0.22)).sample_params(N, 32, 32, gen())
    assert not binomial_ok(p["gray"], 0.2)


def test_brightness_only_jitter_has_lower_bound_clipped_at_zero():
    aug = BatchedAugment(replace(IDENTITY, jitter=(1.5, 0.0, 0.0, 0.0), jitter_p=1.0))
    p = aug.sample_params(N, 8, 8, gen())
    assert p["brightness"].min() >= 0.0 and p["brightness"].max() <= 2.5
    assert abs(p["brightness"].mean().item() - 1.25) < 0.03  # U[max(0, 1 - 1.5), 2.5]


def test_seeded_generator_is_deterministic():
    aug = BatchedAugment(SIMCLR)
    x = images(16, 28, 28)
    a, b, c = aug(x, gen(7)), aug(x, gen(7)), aug(x, gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    pa, pb = aug.sample_params(16, 28, 28, gen(7)), aug.sample_params(16, 28, 28, gen(7))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


# ----------------------------------------------------------------------------- exact op checks

def test_flip_mirrors_and_identity_recipe_is_identity():
    x = images(8)
    torch.testing.assert_close(BatchedAugment(IDENTITY)(x), x)
    torch.testing.assert_close(BatchedAugment(replace(IDENTITY, flip_p=1.0))(x), x.flip(-1))
    aug = BatchedAugment(replace(IDENTITY, flip_p=0.5))
    p, out = aug.sample_params(8, 24, 24, gen(3)), aug(x, gen(3))
    torch.testing.assert_close(out, torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(-1), x))


def test_grayscale_uses_torchvision_weights():
    x = torch.zeros(3, 3, 24, 24)
    x[0, 0], x[1, 1], x[2, 2] = 1.0, 1.0, 1.0  # pure red, green, blue
    out = BatchedAugment(replace(IDENTITY, gray_p=1.0))(x)
    for k, weight in enumerate((0.2989, 0.587, 0.114)):
        torch.testing.assert_close(out[k], torch.full((3, 24, 24), weight))
    y = images(4)
    torch.testing.assert_close(BatchedAugment(replace(IDENTITY, gray_p=1.0))(y),
                               TF.rgb_to_grayscale(y, num_output_channels=3))


def test_brightness_factor_multiplies():
    x = images(32) * 0.5
    aug = BatchedAugment(replace(IDENTITY, jitter=(0.9, 0.0, 0.0, 0.0), jitter_p=1.0))
    f = aug.sample_params(32, 24, 24, gen(2))["brightness"]
    torch.testing.assert_close(aug(x, gen(2)), (x * f.view(-1, 1, 1, 1)).clamp(0, 1))


@pytest.mark.parametrize(("jitter", "name", "fn"), [
    ((0.0, 0.8, 0.0, 0.0), "contrast", TF.adjust_contrast),
    ((0.0, 0.0, 0.8, 0.0), "saturation", TF.adjust_saturation),
    ((0.0, 0.0, 0.0, 0.5), "hue", TF.adjust_hue),
])
def test_single_colour_op_matches_torchvision(jitter, name, fn):
    x = images(32)
    aug = BatchedAugment(replace(IDENTITY, jitter=jitter, jitter_p=1.0))
    f = aug.sample_params(32, 24, 24, gen(4))[name]
    ref = torch.stack([fn(x[k], float(f[k])) for k in range(32)])
    torch.testing.assert_close(aug(x, gen(4)), ref, atol=2e-6, rtol=0)


def test_hue_on_gray_and_saturated_pixels():
    pixels = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.2, 0.9, 0.9],
              [0.3, 0.2, 0.9], [1.0, 1.0, 0.0], [0.0, 0.4, 0.2]]  # grays, primaries, ties between maxima
    x = torch.tensor(pixels).T.reshape(1, 3, 2, 4).repeat(5, 1, 1, 1)
    from sslkit.augment.color import adjust_hue
    for k, f in enumerate([-0.5, -0.25, 0.0, 0.3, 0.5]):
        torch.testing.assert_close(adjust_hue(x[k:k + 1], torch.tensor([f]))[0], TF.adjust_hue(x[k], f),
                                   atol=1e-6, rtol=0)


def test_blur_matches_torchvision_gaussian_blur():
    x = images(32, 32, 32)
    recipe = replace(IDENTITY, image_size=32, blur_p=1.0, blur_kernel_frac=0.2)  # kernel 7 (odd of 6.4)
    aug = BatchedAugment(recipe)
    sigma = aug.sample_params(32, 32, 32, gen(5))["sigma"]
    ref = torch.stack([TF.gaussian_blur(x[k], [7, 7], [float(sigma[k])] * 2) for k in range(32)])
    torch.testing.assert_close(aug(x, gen(5)), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("size", "out"), [(28, 32), (64, 16), (40, 40), (96, 24)],
                         ids=["up", "down-antialias", "same", "down-float64"])
def test_crop_resize_matches_torchvision_resized_crop(size, out):
    x = images(64, size, size)
    aug = BatchedAugment(replace(SIMCLR, image_size=out, jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip_p=0.0,
                                 mean=(0.0,) * 3, std=(1.0,) * 3))
    p = aug.sample_params(64, size, size, gen(6))
    ref = torch.stack([TF.resized_crop(x[k], int(p["i"][k]), int(p["j"][k]), int(p["h"][k]), int(p["w"][k]),
                                       [out, out], antialias=True) for k in range(64)])
    torch.testing.assert_close(aug(x, gen(6)), ref, atol=1e-5, rtol=0)
    # uint8 input: torchvision resizes with 16-bit fixed-point weights, rounding after each pass; the
    # batch emulates that exactly
    xu = (x * 255).round().to(torch.uint8)
    refu = torch.stack([TF.resized_crop(xu[k], int(p["i"][k]), int(p["j"][k]), int(p["h"][k]), int(p["w"][k]),
                                        [out, out], antialias=True) for k in range(64)])
    torch.testing.assert_close((aug(xu, gen(6)) * 255).round(), refu.float(), atol=0, rtol=0)


def torchvision_view(image: torch.Tensor, p: dict[str, torch.Tensor], k: int, recipe: AugRecipe,
                     normalize: bool = True) -> torch.Tensor:
    """Sample k's view by torchvision.transforms.v2.functional, with the parameters BatchedAugment drew."""
    fns = {0: ("brightness", TF.adjust_brightness), 1: ("contrast", TF.adjust_contrast),
           2: ("saturation", TF.adjust_saturation), 3: ("hue", TF.adjust_hue)}
    size, kernel = recipe.image_size, recipe.blur_kernel_size
    y = TF.resized_crop(image, int(p["i"][k]), int(p["j"][k]), int(p["h"][k]), int(p["w"][k]), [size, size],
                        antialias=True)
    if p["jitter"][k]:
        for op in p["order"][k].tolist():
            name, fn = fns[op]
            y = fn(y, float(p[name][k]))
    if p["gray"][k]:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if p["blur"][k]:
        y = TF.gaussian_blur(y, [kernel, kernel], [float(p["sigma"][k])] * 2)
    if p["flip"][k]:
        y = TF.horizontal_flip(y)
    return TF.normalize(TF.to_dtype(y, torch.float32, scale=True), list(recipe.mean), list(recipe.std)) \
        if normalize else y


def test_whole_pipeline_matches_torchvision_functional_with_the_same_parameters():
    """Every op, every order: each sample equals torchvision's functional ops applied with its parameters."""
    x = images(64, 28, 28, seed=3)
    aug = BatchedAugment(SIMCLR)
    p = aug.sample_params(64, 28, 28, gen(9))
    out = aug(x, gen(9))
    for k in range(64):
        torch.testing.assert_close(out[k], torchvision_view(x[k], p, k, SIMCLR), atol=2e-5, rtol=0,
                                   msg=f"sample {k}")
    assert p["jitter"].any() and p["gray"].any() and p["blur"].any() and p["flip"].any()


def test_uint8_pipeline_reproduces_torchvisions_uint8_rounding():
    """uint8 in: torchvision truncates after every colour op (about -0.5 grey level each) and resizes
    with fixed-point weights; the batch reproduces that, down to a pixel in 10^4 off by one level."""
    x = (images(64, 28, 28, seed=3) * 255).round().to(torch.uint8)
    aug = BatchedAugment(replace(SIMCLR, jitter_p=1.0))
    p = aug.sample_params(64, 28, 28, gen(9))
    std, mean = torch.tensor(SIMCLR.std).view(1, 3, 1, 1), torch.tensor(SIMCLR.mean).view(1, 3, 1, 1)
    out = ((aug(x, gen(9)) * std + mean) * 255).round()
    ref = torch.stack([torchvision_view(x[k], p, k, SIMCLR, normalize=False) for k in range(64)]).float()
    diff = out - ref
    assert (diff != 0).float().mean() < 1e-4 and diff.abs().max() <= 2
    # float arithmetic without the truncation would be ~1.5 levels brighter on average
    assert diff.mean().abs() < 0.01


def test_input_types():
    x = images(8, 28, 28)
    xu = (x * 255).round().to(torch.uint8)
    aug = BatchedAugment(MOCOV2)
    out = aug(xu, gen(1))
    assert out.dtype == torch.float32 and out.shape == (8, 3, 32, 32)
    # the same views, up to the uint8 rounding torchvision's uint8 kernels do
    assert (out - aug(xu.float() / 255, gen(1))).abs().mean() < 1.5 / 255 / 0.353
    gray = xu[:, :1]
    torch.testing.assert_close(aug(gray, gen(1)), aug(gray.expand(-1, 3, -1, -1), gen(1)))
    with pytest.raises(ValueError, match=r"expected \(N, 1\|3, H, W\) images"):
        aug(xu[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = images(64, 28, 28)
    aug = BatchedAugment(SIMCLR)
    cpu = aug(x, gen(3))
    gpu = aug.to("cuda")(x.cuda(), gen(3))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_batch_eval_preprocess_matches_eval_transform():
    for h, w, size in ((28, 28, 32), (96, 80, 64), (40, 60, 24)):
        xu = (images(6, h, w) * 255).round().to(torch.uint8)
        mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
        ref = torch.stack([eval_transform(size, mean, std)(xu[k]) for k in range(6)])
        out = batch_eval_preprocess(xu, size, mean, std)
        assert out.shape == (6, 3, size, size)
        # per-image resizes in uint8 (fixed-point weights, rounded); the batch stays in float
        assert (out - ref).abs().max() <= 1.0 / 255 / 0.2 + 1e-4


def test_grey_fast_path_matches_torchvision_on_repeated_channels():
    """Grey images repeated to RGB run on one channel (hue skipped): each view still equals torchvision's."""
    x = images(48, 28, 28, seed=5)[:, :1].expand(-1, 3, -1, -1).contiguous()
    aug = BatchedAugment(replace(SIMCLR, jitter_p=1.0))
    p = aug.sample_params(48, 28, 28, gen(4))
    out = aug(x, gen(4))
    for k in range(48):
        torch.testing.assert_close(out[k], torchvision_view(x[k], p, k, SIMCLR), atol=2e-5, rtol=0, msg=f"sample {k}")
