"""CLIP ViT-B/32 in plain torch, with OpenAI's parameter names so their checkpoints load with strict=True.

Written after OpenAI CLIP's `clip/model.py` (ViT branch only, fp32 only). The architecture is fixed:
LAION-400M's embeddings were made with exactly this model, so there is nothing to configure. The layers
are our own minimal ones with uninitialised storage: torch's default init of 151M parameters would cost
seconds that every UDF process start pays, and a checkpoint overwrites it anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def _param(*shape: int) -> nn.Parameter:
    """Uninitialised storage: pages are only touched when weights are written into them."""
    return nn.Parameter(torch.empty(*shape))


class Linear(nn.Module):
    """`weight` [out, in] and `bias` [out], as nn.Linear names them."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.weight = _param(outputs, inputs)
        self.bias = _param(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LayerNorm(nn.Module):
    """fp32 LayerNorm with eps 1e-5, as in CLIP."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = _param(width)
        self.bias = _param(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, 1e-5)


class PatchEmbedding(nn.Module):
    """The ViT patch kernel (`conv1.weight`, no bias): a stride-32 convolution cuts 32x32 patches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = _param(VISION_WIDTH, 3, PATCH_SIZE, PATCH_SIZE)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.conv2d(pixels, self.weight, stride=PATCH_SIZE)


class Embedding(nn.Module):
    """Token id → row of `weight`, as nn.Embedding names it."""

    def __init__(self, count: int, width: int) -> None:
        super().__init__()
        self.weight = _param(count, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's packed q/k/v names (in_proj_*, out_proj)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = _param(3 * width, width)
        self.in_proj_bias = _param(3 * width)
        self.out_proj = Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        projected: torch.Tensor = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        return projected


class Mlp(nn.Module):
    """c_fc → QuickGELU → c_proj. QuickGELU (x·σ(1.702x)) is what OpenAI's ViT-B/32 was trained with."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = Linear(width, 4 * width)
        self.c_proj = Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.c_fc(x)
        out: torch.Tensor = self.c_proj(hidden * torch.sigmoid(1.702 * hidden))
        return out


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = Mlp(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended: torch.Tensor = self.attn(self.ln_1(x), mask)
        x = x + attended
        transformed: torch.Tensor = self.mlp(self.ln_2(x))
        return x + transformed


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
        self.conv1 = PatchEmbedding()
        self.class_embedding = _param(VISION_WIDTH)
        self.positional_embedding = _param(grid * grid + 1, VISION_WIDTH)
        self.ln_pre = LayerNorm(VISION_WIDTH)
        self.transformer = Transformer(VISION_WIDTH, VISION_LAYERS, VISION_HEADS)
        self.ln_post = LayerNorm(VISION_WIDTH)
        self.proj = _param(VISION_WIDTH, EMBED_DIM)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches: torch.Tensor = self.conv1(pixels)
        x = patches.flatten(2).transpose(1, 2)  # [batch, 49, width]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        pooled: torch.Tensor = self.ln_post(x[:, 0, :])
        return pooled @ self.proj


class ClipModel(nn.Module):
    """Both CLIP towers; `encode_text` / `encode_image` return unnormalised 512-d features.

    Constructed uninitialised: `random_model` fills it, or `weights.load_into` assigns a checkpoint.
    """

    def __init__(self) -> None:
        super().__init__()
        self.visual = VisionTransformer()
        self.transformer = Transformer(TEXT_WIDTH, TEXT_LAYERS, TEXT_HEADS)
        self.token_embedding = Embedding(VOCAB_SIZE, TEXT_WIDTH)
        self.positional_embedding = _param(CONTEXT_LENGTH, TEXT_WIDTH)
        self.ln_final = LayerNorm(TEXT_WIDTH)
        self.text_projection = _param(TEXT_WIDTH, EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.empty([]))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features at each row's end-of-text token (the largest id in the row).

        The mask is causal, so positions after the last EOT never influence it: the context is cut to the
        longest row, which gives the same result as running all 77 positions, several times faster.
        """
        eot = tokens.argmax(dim=-1)
        length = int(eot.max().item()) + 1
        x = self.token_embedding(tokens[:, :length]) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, causal_mask(length, x.dtype)))
        features: torch.Tensor = x[torch.arange(x.shape[0]), eot] @ self.text_projection
        return features

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of a [batch, 3, 224, 224] batch normalised as in `preprocess`."""
        features: torch.Tensor = self.visual(pixels)
        return features


def causal_mask(length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask: -inf above the diagonal, so a token attends only to itself and earlier ones."""
    return torch.full((length, length), float("-inf"), dtype=dtype).triu_(1)


def initialize(model: ClipModel) -> None:
    """Fill every tensor from the current torch seed: OpenAI's scheme for the weights (so a random model's
    features are spread out rather than degenerate), zero biases, unit LayerNorm scales."""
    for module in model.modules():
        if isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
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
    """The fixed random-weights model behind `--weights random`: same seed, same weights, same output."""
    torch.manual_seed(seed)
    model = ClipModel()
    initialize(model)
    return model.eval()
