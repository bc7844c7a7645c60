"""Tiny random-weight Flux pipelines of the real architecture, for tests and smoke runs.

:func:`save_tiny_flux` writes a complete diffusers folder (transformer, VAE, CLIP and T5
encoders, their tokenizers, the flow-matching scheduler) with a few thousand random
parameters, so that every code path that loads real weights from a folder runs on a CPU in
well under a second. The tokenizers are built locally from a character vocabulary (nothing is
downloaded). Every component is re-seeded before it is built, so the same ``seed`` writes the
same weights.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

#: Transformer layout of the tiny model: one double-stream block, one single-stream block.
TINY_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 16,  # packed 2x2 patches of the VAE's 4 latent channels
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,  # T5 hidden size
    "pooled_projection_dim": 32,  # CLIP hidden size
    "guidance_embeds": True,  # like Flux.1-dev
    "axes_dims_rope": (4, 4, 8),  # sums to attention_head_dim
}

_CHARS = string.ascii_lowercase + string.digits + ".,-'"


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    # One token per character (word-final variants too), so any lower-case prompt tokenises.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    chars = _CHARS + string.ascii_uppercase
    pieces += [(ch, -3.0) for ch in chars] + [("\u2581" + ch, -2.5) for ch in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_flux(seed: int = 0):
    """A :class:`diffusers.FluxPipeline` of tiny random models, every model in ``.eval()``.

    The VAE has 3 resolution levels (``vae_scale_factor`` 4), so a 128 x 64 image is a
    32 x 16 latent and 16 x 8 = 128 image tokens.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = _clip_tokenizer()
    t5_tok = _t5_tokenizer()

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TINY_TRANSFORMER)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    torch.manual_seed(seed + 2)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    for model in (transformer, vae, clip, t5):
        model.eval()
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def save_tiny_flux(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Flux diffusers folder to ``path`` (created) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tiny_flux(seed).save_pretrained(path)
    return path


#: Control modes of the tiny union ControlNet (InstantX Union has 10 mode embeddings).
TINY_CONTROL_MODES = 10
#: Tiny SigLIP vision tower: 32 px images in 8 px patches -> 16 image tokens.
TINY_SIGLIP = {
    "hidden_size": 16,
    "intermediate_size": 37,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def build_tiny_controlnet(seed: int = 0):
    """A tiny union :class:`diffusers.FluxControlNetModel` matching :func:`build_tiny_flux`.

    The released architecture zero-initialises its output projections (a fresh ControlNet
    changes nothing); here they are random too, so tests can see the condition's effect.
    """
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed + 10)
    config = {k: v for k, v in TINY_TRANSFORMER.items()}
    model = FluxControlNetModel(**config, num_mode=TINY_CONTROL_MODES)
    with torch.no_grad():
        zeroed = [model.controlnet_x_embedder, *model.controlnet_blocks,
                  *model.controlnet_single_blocks]
        for layer in zeroed:
            torch.nn.init.normal_(layer.weight, std=0.5)
            torch.nn.init.normal_(layer.bias, std=0.1)
    return model.eval()


def save_tiny_controlnet(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny ControlNet-Union folder (``config.json`` + safetensors), as InstantX's."""
    path = Path(path)
    build_tiny_controlnet(seed).save_pretrained(path)
    return path


def build_tiny_redux(seed: int = 0):
    """A tiny :class:`diffusers.FluxPriorReduxPipeline`: SigLIP vision tower, its image
    processor, and the Redux projection to the tiny T5 width (32)."""
    from diffusers import FluxPriorReduxPipeline
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed + 20)
    encoder = SiglipVisionModel(SiglipVisionConfig(**TINY_SIGLIP))
    torch.manual_seed(seed + 21)
    embedder = ReduxImageEncoder(
        redux_dim=TINY_SIGLIP["hidden_size"],
        txt_in_features=TINY_TRANSFORMER["joint_attention_dim"],
    )
    size = TINY_SIGLIP["image_size"]
    processor = SiglipImageProcessor(size={"height": size, "width": size})
    encoder.eval()
    embedder.eval()
    return FluxPriorReduxPipeline(
        image_encoder=encoder, feature_extractor=processor, image_embedder=embedder
    )


def save_tiny_redux(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Redux folder (``model_index.json``, ``image_encoder/``,
    ``feature_extractor/``, ``image_embedder/``), as FLUX.1-Redux-dev's."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tiny_redux(seed).save_pretrained(path)
    return path


#: Layout of the tiny BLIP captioner: one layer each, 32-wide, 32-pixel images in 8-pixel patches.
TINY_BLIP_VISION = {"hidden_size": 32, "image_size": 32, "patch_size": 8, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "intermediate_size": 37}


def save_tiny_blip_captioner(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``BlipForConditionalGeneration`` and its processor to ``path``
    (``save_pretrained`` of both, the layout of ``Salesforce/blip-image-captioning-*``).

    The tokenizer is a WordPiece vocabulary of the special tokens and single letters, written
    here (nothing is downloaded); ``[DEC]`` starts decoding and ``[SEP]`` ends it, as in BLIP."""
    import tempfile

    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = special + list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]")
    ids = {token: n for n, token in enumerate(vocab)}
    text = {"vocab_size": len(vocab), "hidden_size": 32, "encoder_hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37,
            "max_position_embeddings": 128, "pad_token_id": ids["[PAD]"],
            "bos_token_id": ids["[DEC]"], "sep_token_id": ids["[SEP]"],
            "eos_token_id": ids["[SEP]"]}
    torch.manual_seed(seed + 30)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text, vision_config=TINY_BLIP_VISION, projection_dim=32)
    ).eval()
    size = TINY_BLIP_VISION["image_size"]
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": size,
                                                                        "width": size}),
                              tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


#: Side of one view of the tiny Zero123++ (the release's is 320).
TINY_ZERO123_VIEW = 32


def save_tiny_zero123plus(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Zero123++ folder in the ``sudo-ai/zero123plus-v1.2`` layout:
    ``model_index.json`` (with 77 ``ramping_coefficients``) and ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``unet/``, ``scheduler/``, ``vision_encoder/``,
    ``feature_extractor_clip/``, ``feature_extractor_vae/`` as ``save_pretrained`` writes them.

    The architectures are the release's (SD2-style UNet with cross-attention, KL VAE, CLIP
    text and vision towers, v-prediction Euler ancestral scheduler) at toy sizes: 32-wide
    text states, a VAE that halves the image, 32-pixel views."""
    import json

    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from models.generate.kiss3dgen.zero123plus import ZERO123PLUS_PARTS

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    width = 32
    torch.manual_seed(seed + 40)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                  latent_channels=4, norm_num_groups=4, sample_size=TINY_ZERO123_VIEW
                  ).save_pretrained(path / "vae")
    torch.manual_seed(seed + 41)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(_clip_tokenizer()), hidden_size=width, intermediate_size=37,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
        projection_dim=width, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).save_pretrained(path / "text_encoder")
    _clip_tokenizer().save_pretrained(path / "tokenizer")
    torch.manual_seed(seed + 42)
    UNet2DConditionModel(
        sample_size=TINY_ZERO123_VIEW, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=width,
        attention_head_dim=4, norm_num_groups=4,
    ).save_pretrained(path / "unet")
    EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", prediction_type="v_prediction",
        timestep_spacing="trailing",
    ).save_pretrained(path / "scheduler")
    torch.manual_seed(seed + 43)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        image_size=TINY_ZERO123_VIEW, patch_size=8, projection_dim=width,
    )).save_pretrained(path / "vision_encoder")
    side = {"height": TINY_ZERO123_VIEW, "width": TINY_ZERO123_VIEW}
    CLIPImageProcessor(size={"shortest_edge": TINY_ZERO123_VIEW}, crop_size=side
                       ).save_pretrained(path / "feature_extractor_clip")
    CLIPImageProcessor(size={"shortest_edge": TINY_ZERO123_VIEW}, crop_size=side,
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
                       ).save_pretrained(path / "feature_extractor_vae")
    generator = torch.Generator().manual_seed(seed + 44)
    ramping = torch.rand(77, generator=generator).tolist()
    index = {"_class_name": ["pipeline", "Zero123PlusPipeline"], "_diffusers_version": "0.20.2",
             "ramping_coefficients": ramping}
    for name, (library, class_name) in ZERO123PLUS_PARTS.items():
        index[name] = [library, class_name]
    (path / "model_index.json").write_text(json.dumps(index, indent=1))
    return path


def save_tiny_florence2_captioner(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``Florence2ForConditionalGeneration`` and its ``Florence2Processor``
    to ``path`` (``save_pretrained`` of both, the layout of ``florence-community/Florence-2-*``).

    DaViT vision tower of two stages (32-pixel images -> 16 tokens + 1 pooled), a one-layer
    BART of width 32, and a byte-level BPE vocabulary of single letters with the ``<image>``
    token, written here. Its generation config asks for at least 4 new tokens: a random
    decoder would otherwise often end the caption at once."""
    from transformers import (
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in string.ascii_lowercase + ".,":
        vocab[ch] = len(vocab)
        vocab["\u0120" + ch] = len(vocab)  # the byte-level BPE's word-initial form
    vocab["\u0120"] = len(vocab)
    vocab["<image>"] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=[],
                              extra_special_tokens={"image_token": "<image>"})
    side = 32
    image_processor = CLIPImageProcessor(size={"height": side, "width": side},
                                         crop_size={"height": side, "width": side},
                                         do_center_crop=False)
    image_processor.image_seq_length = (side // 8) ** 2 + 1  # stride 4 then 2, plus pooled
    vision = {"depths": [1, 1], "patch_size": [7, 3], "patch_stride": [4, 2],
              "patch_padding": [3, 1], "patch_prenorm": [False, True], "embed_dim": [8, 16],
              "num_heads": [1, 2], "num_groups": [1, 2], "window_size": 2, "projection_dim": 32,
              "max_position_embeddings": 8, "max_temporal_embeddings": 2}
    text = {"vocab_size": len(tokenizer), "d_model": 32, "encoder_layers": 1,
            "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
            "encoder_ffn_dim": 37, "decoder_ffn_dim": 37, "max_position_embeddings": 128,
            "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
            "decoder_start_token_id": 2}
    torch.manual_seed(seed + 50)
    model = Florence2ForConditionalGeneration(Florence2Config(
        text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)).eval()
    model.generation_config.min_new_tokens = 4
    model.save_pretrained(path)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path
