"""SAM-like segmentors: Meta's Segment Anything (box/point prompted) and a SAMed-style LoRA variant.

Both wrap a `segment_anything.modeling.Sam` as `self.sam` and behave as every other segmentor:
a (B, 1, H, W) image in [0, 1] in, logits (B, 1, H, W) at the input size out. The image is
resized to the encoder's square input, repeated to 3 channels and normalised ("sam": SAM's
ImageNet pixel statistics on a 0-255 scale; "minmax": per-image min-max to [0, 1], as MedSAM).
The latent site is the image encoder's output, the image embedding (`sam.image_encoder`).

Official SAM and MedSAM checkpoints (state dicts with image_encoder./prompt_encoder./mask_decoder.
keys) load into `variant` vit_b/vit_l/vit_h; at an `img_size` other than 1024 the absolute and
global-attention relative position embeddings are interpolated (as SAMed does for 512 px).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from applefair.errors import InputError
from applefair.models.prompts import PromptConfig, PromptedModule

# name -> (embed_dim, depth, num_heads, global_attn_indexes), as segment_anything.build_sam
VARIANTS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "tiny": (64, 2, 2, (1,)),  # CPU tests: 8x8 patches of a 64 px image, 32-d prompt space
}
NORMALIZE = ("sam", "minmax")
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def build_sam(variant: str = "vit_b", img_size: int | None = None) -> nn.Module:
    """A randomly initialised `Sam`; at 1024 px for vit_b/l/h it comes from segment_anything's
    own builders (checkpoint=None: nothing is read or downloaded)."""
    from segment_anything import sam_model_registry
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if variant not in VARIANTS:
        raise InputError(f"SAM variant '{variant}' is not known (expected one of: {', '.join(VARIANTS)})")
    tiny = variant == "tiny"
    img_size = int(img_size or (64 if tiny else 1024))
    patch = 8 if tiny else 16
    if img_size % patch:
        raise InputError(f"SAM img_size {img_size}: expected a multiple of the patch size {patch}")
    if variant != "tiny" and img_size == 1024:
        return sam_model_registry[variant](checkpoint=None)
    embed_dim, depth, heads, global_idx = VARIANTS[variant]
    prompt_dim = 32 if tiny else 256
    grid = img_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=patch, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=global_idx, window_size=4 if tiny else 14, out_chans=prompt_dim),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4 if tiny else 16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64 if tiny else 2048,
                                          num_heads=2 if tiny else 8),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=32 if tiny else 256),
        pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD))


def decode_batched(decoder: nn.Module, emb: torch.Tensor, pe: torch.Tensor, sparse: torch.Tensor,
                   dense: torch.Tensor) -> torch.Tensor:
    """SAM's single-mask logits (B, 1, 4h, 4w) for B images with one prompt each, in one call.

    `MaskDecoder.predict_masks` is made for one image with many prompts (it repeats the image
    embedding per prompt), so a batch of images would need one call per image. This runs the same
    steps with the batch as the batch: output tokens plus each image's prompt tokens, the two-way
    transformer over (embedding + dense prompt, positional encoding), the upscaling, and the first
    mask token's hypernetwork (`multimask_output=False`). The IoU head and the three multimask
    outputs are not computed: the segmentor never returns them. `sparse`/`dense` of batch 1
    (SAMed's "no prompt") are shared by every image.
    """
    n = emb.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse.expand(n, -1, -1)], dim=1)
    src = emb + dense
    hs, src = decoder.transformer(src, pe.expand(n, -1, -1, -1), tokens)
    c, h, w = emb.shape[1:]
    up = decoder.output_upscaling(src.transpose(1, 2).view(n, c, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])  # mask token 0: the single-mask output
    return (hyper.unsqueeze(1) @ up.flatten(2)).view(n, 1, *up.shape[-2:])


def decode_loop(decoder: nn.Module, emb: torch.Tensor, pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
    """The reference for `decode_batched`: segment_anything's MaskDecoder, one image per call."""
    n = emb.shape[0]
    return torch.cat([decoder(image_embeddings=emb[i:i + 1], image_pe=pe,
                              sparse_prompt_embeddings=sparse[i:i + 1] if len(sparse) > 1 else sparse,
                              dense_prompt_embeddings=dense[i:i + 1] if len(dense) > 1 else dense,
                              multimask_output=False)[0] for i in range(n)])


class SamSegmentor(PromptedModule):
    """SAM as a binary segmentor; `prompt=None` runs without prompts (SAMed)."""

    def __init__(self, sam: nn.Module, prompt: PromptConfig | None, normalize: str = "sam"):
        super().__init__()
        if normalize not in NORMALIZE:
            raise InputError(f"normalize '{normalize}' is not known (expected one of: {', '.join(NORMALIZE)})")
        self.sam = sam
        self.prompt = prompt
        self.normalize = normalize

    @property
    def img_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, H, W) in [0, 1] -> (B, 3, S, S) as the image encoder expects."""
        s = self.img_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize == "minmax":
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            return (x - lo) / (hi - lo).clamp_min(1e-8)
        return (x * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std

    def forward(self, x: torch.Tensor, boxes=None, points=None, labels=None) -> torch.Tensor:
        """Logits (B, 1, H, W) for images (B, 1 or 3, H, W), all decoded in one batched call.

        Explicit prompts, in input-pixel coordinates, override those of the batch handed over by
        `segment()`: `boxes` (B, 4) as x0, y0, x1, y1; `points` (B, K, 2) as x, y with `labels`
        (B, K): 1 foreground, 0 background, -1 no point (default 1). Without either, `sam` takes the
        whole image as its box, so a bare `net(x)` still segments something.
        """
        return self._run(x, boxes, points, labels, decode_batched)

    def _forward_loop(self, x: torch.Tensor, boxes=None, points=None, labels=None) -> torch.Tensor:
        """`forward` decoding one image at a time with segment_anything's own MaskDecoder: the reference
        the batched decoder is tested and benchmarked against."""
        return self._run(x, boxes, points, labels, decode_loop)

    def _run(self, x: torch.Tensor, boxes, points, labels, decode) -> torch.Tensor:
        n, _, h, w = x.shape
        explicit = self._explicit_prompts(n, boxes, points, labels)
        prompts = explicit if explicit is not None else self.current_prompts(n, h, w)
        emb = self.sam.image_encoder(self.preprocess(x))
        sparse, dense = self._embed_prompts(prompts, n, h, w, x.device)
        low = decode(self.sam.mask_decoder, emb, self.sam.prompt_encoder.get_dense_pe(), sparse, dense)
        return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)

    def _explicit_prompts(self, n: int, boxes, points, labels) -> dict[str, torch.Tensor] | None:
        """Prompts given to forward(), checked against the batch size (None when none were given)."""
        if boxes is None and points is None:
            if labels is not None:
                raise InputError("labels given without points: expected points (B, K, 2) with labels (B, K)")
            return None
        if self.prompt is None:
            raise InputError(f"{type(self).__name__} takes no prompt: expected boxes=None and points=None")
        out: dict[str, torch.Tensor] = {}
        if boxes is not None:
            b = torch.as_tensor(boxes, dtype=torch.float32)
            if tuple(b.shape) != (n, 4):
                raise InputError(f"boxes of shape {tuple(b.shape)}: expected ({n}, 4) as x0, y0, x1, y1 in input "
                                 "pixels, one box per image")
            out["boxes"] = b
        if points is not None:
            p = torch.as_tensor(points, dtype=torch.float32)
            p = p[:, None, :] if p.dim() == 2 else p
            if p.dim() != 3 or p.shape[0] != n or p.shape[2] != 2:
                raise InputError(f"points of shape {tuple(torch.as_tensor(points).shape)}: expected ({n}, K, 2) "
                                 "as x, y in input pixels")
            k = p.shape[1]
            lab = torch.ones(n, k, dtype=torch.int64) if labels is None else torch.as_tensor(labels)
            if lab.numel() != n * k or lab.is_floating_point() and not torch.equal(lab, lab.round()):
                raise InputError(f"labels of shape {tuple(lab.shape)}: expected ({n}, {k}) integers "
                                 "(1 foreground, 0 background, -1 no point)")
            out["points"], out["labels"] = p, lab.reshape(n, k).to(torch.int64)
        return out

    def _embed_prompts(self, prompts: dict | None, n: int, h: int, w: int, device: torch.device):
        """SAM's sparse (B, N, C) and dense (B or 1, C, h', w') prompt embeddings, prompts rescaled to the
        encoder's input."""
        enc = self.sam.prompt_encoder
        if prompts is None:
            return enc(points=None, boxes=None, masks=None)
        scale = torch.tensor([self.img_size / w, self.img_size / h], device=device)
        boxes = points = None
        if "boxes" in prompts:
            boxes = (prompts["boxes"].to(device=device, dtype=torch.float32).reshape(n, 2, 2) * scale).reshape(n, 4)
        if "points" in prompts:
            points = (prompts["points"].to(device=device, dtype=torch.float32) * scale, prompts["labels"].to(device))
        return enc(points=points, boxes=boxes, masks=None)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept a bare SAM/MedSAM state dict (adds the `sam.` prefix) at any image size."""
        if state and all(not k.startswith("sam.") for k in state) and any(
                k.startswith(("image_encoder.", "mask_decoder.", "prompt_encoder.")) for k in state):
            state = {f"sam.{k}": v for k, v in state.items()}
        own = self.state_dict()
        out = dict(state)
        for k, v in state.items():
            if k not in own or own[k].shape == v.shape:
                continue
            if k.endswith("image_encoder.pos_embed") and v.dim() == 4:
                grid = own[k].shape[1:3]
                out[k] = F.interpolate(v.permute(0, 3, 1, 2).float(), size=tuple(grid), mode="bicubic",
                                       align_corners=False).permute(0, 2, 3, 1).to(v.dtype)
            elif k.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and v.dim() == 2 and v.shape[1] == own[k].shape[1]:
                out[k] = F.interpolate(v.T[None].float(), size=own[k].shape[0], mode="linear",
                                       align_corners=False)[0].T.to(v.dtype)
        return out

    def optional_key(self, key: str) -> bool:
        """Keys a checkpoint may lack (adapters that start at zero)."""
        return False


class LoRAQKV(nn.Linear):
    """SAM's attention qkv projection plus low-rank adapters on q and v (SAMed).

    It *is* the original Linear (same `weight`/`bias` names, so SAM checkpoints load), plus
    `lora_{q,v}_{a,b}`; the b matrices start at zero, so a fresh adapter changes nothing.
    """

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.load_state_dict(base.state_dict())
        dim = base.in_features
        self.lora_q_a = nn.Linear(dim, rank, bias=False)
        self.lora_q_b = nn.Linear(rank, dim, bias=False)
        self.lora_v_a = nn.Linear(dim, rank, bias=False)
        self.lora_v_b = nn.Linear(rank, dim, bias=False)
        for a in (self.lora_q_a, self.lora_v_a):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_q_b.weight)
        nn.init.zeros_(self.lora_v_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.lora_q_b(self.lora_q_a(x))
        v = self.lora_v_b(self.lora_v_a(x))
        return F.linear(x, self.weight, self.bias) + torch.cat([q, torch.zeros_like(q), v], dim=-1)


class SamedSegmentor(SamSegmentor):
    """SAMed: SAM without prompts, LoRA on every image-encoder block; the encoder's own weights are
    frozen (requires_grad=False), adapters, prompt encoder and mask decoder train end to end."""

    def __init__(self, sam: nn.Module, rank: int = 4, normalize: str = "sam"):
        super().__init__(sam, prompt=None, normalize=normalize)
        for p in sam.image_encoder.parameters():
            p.requires_grad_(False)
        for block in sam.image_encoder.blocks:
            block.attn.qkv = LoRAQKV(block.attn.qkv, rank=rank)

    def optional_key(self, key: str) -> bool:
        return ".lora_" in key


def _check_size(img_size: int | None) -> None:
    if img_size is not None and int(img_size) < 32:
        raise InputError(f"SAM img_size {img_size}: expected at least 32 px")


def build_prompted(variant: str = "vit_b", img_size: int | None = None, prompt: str = "box", jitter: int = 0,
                   prompt_seed: int = 0, normalize: str = "sam", train_prompt_encoder: bool = False
                   ) -> tuple[nn.Module, str, list[str]]:
    """`sam`: Segment Anything with a box or point prompt derived from the ground truth.

    As MedSAM, the prompt encoder is frozen unless `train_prompt_encoder`."""
    _check_size(img_size)
    net = SamSegmentor(build_sam(variant, img_size), PromptConfig(prompt, int(jitter), int(prompt_seed)), normalize)
    if not train_prompt_encoder:
        for p in net.sam.prompt_encoder.parameters():
            p.requires_grad_(False)
    return net, "sam.image_encoder", []


def build_samed(variant: str = "vit_b", img_size: int | None = None, rank: int = 4, normalize: str = "sam"
                ) -> tuple[nn.Module, str, list[str]]:
    """`samed`: SAMed-style LoRA-adapted SAM, no prompt."""
    _check_size(img_size)
    return SamedSegmentor(build_sam(variant, img_size), rank=int(rank), normalize=normalize), "sam.image_encoder", []


def _register() -> None:
    from applefair.models.registry import preset, register

    register("sam", tiny={"variant": "tiny"},
             summary="Segment Anything (vit_b/l/h; SAM or MedSAM checkpoint), box/point prompt from the mask"
             )(build_prompted)
    register("samed", tiny={"variant": "tiny"},
             summary="SAMed: LoRA-adapted SAM image encoder, no prompt")(build_samed)
    # --tiny keeps a preset's other arguments but not its input size (img_size None: the tiny 64 px)
    tiny = {"img_size": None}
    for size in (1024, 512, 256):
        preset(f"sam_vit_b_{size}", "sam", {"variant": "vit_b", "img_size": size}, tiny=tiny, size=size,
               summary=f"SAM ViT-B at {size} px, box prompt" + (" (SAM's own input size)" if size == 1024 else
                                                                  " (position embeddings interpolated on load)"))
    preset("medsam_vit_b_1024", "sam", {"variant": "vit_b", "img_size": 1024, "normalize": "minmax"}, tiny=tiny,
           size=1024, summary="MedSAM's shape: SAM ViT-B at 1024 px, min-max input normalisation, box prompt")
    preset("samed_vit_b_512", "samed", {"variant": "vit_b", "img_size": 512, "rank": 4}, tiny=tiny, size=512,
           summary="SAMed's shape: SAM ViT-B at 512 px, LoRA rank 4 on q and v, no prompt")


_register()
