"""`aug.order`: official MoCo v1 applies RandomGrayscale THEN ColorJitter; both backends follow the option."""

from dataclasses import replace

import pytest
import torch

from sslkit.augment import AugRecipe, BatchedAugment, per_image_transform
from sslkit.config import as_dict, compose
from sslkit.errors import ConfigError

# Always grey, always a strong hue shift, no geometry: grey-then-jitter leaves the grey image (hue is the
# identity on grey pixels); jitter-then-grey turns the hue-rotated colours into other grey levels.
RECIPE = AugRecipe(image_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=(0.0, 0.0, 0.0, 0.5),
                   jitter_p=1.0, gray_p=1.0, blur_p=0.0, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1, flip_p=0.0,
                   mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def colour_image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of a float [0, 1] image, as torchvision's rgb_to_grayscale (uint8-rounded)."""
    y = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]) * 255
    return y.round() / 255


@pytest.mark.parametrize("backend", ["per_image", "batched"])
def test_gray_first_ignores_hue_and_jitter_first_does_not(backend):
    x = colour_image()

    def view(order: str, seed: int) -> torch.Tensor:
        recipe = replace(RECIPE, order=order)
        torch.manual_seed(seed)
        if backend == "per_image":
            return per_image_transform(recipe)(x)
        return BatchedAugment(recipe)(x.unsqueeze(0), torch.Generator().manual_seed(seed))[0]

    expected = grey(x.float() / 255)
    for seed in range(3):
        v = view("gray_first", seed)
        torch.testing.assert_close(v, expected.expand(3, -1, -1), atol=1.5 / 255, rtol=0)
    assert any((view("jitter_first", s)[0] - expected).abs().max() > 10 / 255 for s in range(3))


def test_configs_name_the_order_of_each_reference():
    assert as_dict(compose(["aug=mocov1"]).aug)["order"] == "gray_first"  # official MoCo v1 main_moco.py
    assert as_dict(compose(["aug=mocov2"]).aug)["order"] == "jitter_first"  # MoCo v2 aug+
    assert as_dict(compose(["aug=simclr"]).aug)["order"] == "jitter_first"  # SimCLR appendix A
    assert AugRecipe.from_config(as_dict(compose(["method=mocov1"]).aug)).order == "gray_first"
    with pytest.raises(ConfigError):
        AugRecipe.from_config({**as_dict(compose(["aug=mocov1"]).aug), "order": "gray_last"})
