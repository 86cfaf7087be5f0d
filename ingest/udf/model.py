"""CLIP ViT-B/32 in plain torch, with OpenAI's parameter names so their checkpoints load with strict=True.

Written after OpenAI CLIP's `clip/model.py` (ViT branch only, fp32 only). The architecture is fixed:
LAION-400M's embeddings were made with exactly this model, so there is nothing to configure.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

EMBED_DIM = 512
IMAGE_SIZE = 224
PATCH_SIZE = 32
VISION_WIDTH = 768
VISION_LAYERS = 12
VISION_HEADS = 12
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
TEXT_WIDTH = 512
TEXT_HEADS = 8
TEXT_LAYERS = 12
RANDOM_SEED = 0


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's ViT-B/32 was trained with (exact GELU differs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block; child names (attn, ln_1, mlp.c_fc, mlp.c_proj, ln_2) match OpenAI's."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks under `resblocks.N`, the key layout of OpenAI's checkpoints."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    """ViT-B/32 image tower: 7x7 patches plus a class token, projected to the shared 512-d space."""

    def __init__(self) -> None:
        super().__init__()
        grid = IMAGE_SIZE // PATCH_SIZE
        scale = VISION_WIDTH**-0.5
        self.conv1 = nn.Conv2d(3, VISION_WIDTH, kernel_size=PATCH_SIZE, stride=PATCH_SIZE, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(VISION_WIDTH))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, VISION_WIDTH))
        self.ln_pre = nn.LayerNorm(VISION_WIDTH)
        self.transformer = Transformer(VISION_WIDTH, VISION_LAYERS, VISION_HEADS)
        self.ln_post = nn.LayerNorm(VISION_WIDTH)
        self.proj = nn.Parameter(scale * torch.randn(VISION_WIDTH, EMBED_DIM))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [batch, 49, width]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class ClipModel(nn.Module):
    """Both CLIP towers; `encode_text` / `encode_image` return unnormalised 512-d features."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = VisionTransformer()
        self.transformer = Transformer(TEXT_WIDTH, TEXT_LAYERS, TEXT_HEADS)
        self.token_embedding = nn.Embedding(VOCAB_SIZE, TEXT_WIDTH)
        self.positional_embedding = nn.Parameter(torch.empty(CONTEXT_LENGTH, TEXT_WIDTH))
        self.ln_final = nn.LayerNorm(TEXT_WIDTH)
        self.text_projection = nn.Parameter(torch.empty(TEXT_WIDTH, EMBED_DIM))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features at each row's end-of-text token (the largest id in the row).

        The mask is causal, so positions after the last EOT never influence it: the context is cut to the
        longest row, which gives the same result as running all 77 positions, several times faster.
        """
        eot = tokens.argmax(dim=-1)
        length = int(eot.max().item()) + 1
        x = self.token_embedding(tokens[:, :length]) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, causal_mask(length, x.dtype)))
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of a [batch, 3, 224, 224] batch normalised as in `preprocess`."""
        return self.visual(pixels)  # type: ignore[no-any-return]


def causal_mask(length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask: -inf above the diagonal, so a token attends only to itself and earlier ones."""
    return torch.full((length, length), float("-inf"), dtype=dtype).triu_(1)


def initialize(model: ClipModel) -> None:
    """Fill every tensor from the current torch seed: OpenAI's scheme for the weights, so a random model's
    features are spread out rather than degenerate; zero biases and unit LayerNorm scales."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear | nn.MultiheadAttention):
            for name, param in module.named_parameters(recurse=False):
                if name.endswith("bias"):
                    nn.init.zeros_(param)
    visual = model.visual
    nn.init.normal_(visual.conv1.weight, std=(3 * PATCH_SIZE * PATCH_SIZE) ** -0.5)
    for param in (visual.class_embedding, visual.positional_embedding, visual.proj):
        nn.init.normal_(param, std=VISION_WIDTH**-0.5)
    nn.init.normal_(model.token_embedding.weight, std=0.02)
    nn.init.normal_(model.positional_embedding, std=0.01)
    nn.init.normal_(model.text_projection, std=TEXT_WIDTH**-0.5)
    nn.init.constant_(model.logit_scale, math.log(1 / 0.07))
    for tower in (model.transformer, visual.transformer):
        _initialize_blocks(tower)


def _initialize_blocks(tower: Transformer) -> None:
    proj_std = (tower.width**-0.5) * ((2 * tower.layers) ** -0.5)
    for block in tower.resblocks:
        assert isinstance(block, ResidualAttentionBlock)
        nn.init.normal_(block.attn.in_proj_weight, std=tower.width**-0.5)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * tower.width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def random_model(seed: int = RANDOM_SEED) -> ClipModel:
    """The fixed random-weights model behind `--weights random`: same seed, same weights, same output.

    Built on the meta device and filled once, which is several times faster than torch's default init
    followed by ours.
    """
    torch.manual_seed(seed)
    model = empty_model().to_empty(device="cpu")
    initialize(model)
    return model.eval()


def empty_model() -> ClipModel:
    """The architecture without storage (meta device): real weights are then assigned, never copied."""
    with torch.device("meta"):
        return ClipModel()
