"""The LLM2CLIP path: LLM2Vec-style mean pooling of a Llama's hidden states over the text's own tokens,
then the checkpoint's text projection.

The ``llm2vec`` package pins transformers<=4.44 and cannot be installed beside transformers 5, and the
published LLM2CLIP checkpoints run remote code. So the checkpoint here is a small model class with
LLM2CLIP's interface (get_image_features(pixel_values), get_text_features(llm2vec_embeddings)),
registered with the Auto classes and loaded through ``AutoModel.from_pretrained`` like the real one.
"""

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    LlamaConfig,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
)

from modgap.encoders import load_encoder
from modgap.encoders.llm2clip import TEMPLATES
from modgap.world.tiny import build_word_tokenizer


class TinyLLM2CLIPConfig(PretrainedConfig):
    model_type = "tiny-llm2clip"

    def __init__(self, llm_dim: int = 24, projection_dim: int = 12, image_size: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.llm_dim, self.projection_dim, self.image_size = llm_dim, projection_dim, image_size


class TinyLLM2CLIPModel(PreTrainedModel):
    config_class = TinyLLM2CLIPConfig

    def __init__(self, config):
        super().__init__(config)
        vision = CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=config.image_size,
            patch_size=8,
            projection_dim=config.projection_dim,
        )
        self.vision = CLIPVisionModelWithProjection(vision)
        self.text_projection = torch.nn.Linear(config.llm_dim, config.projection_dim)
        self.post_init()

    def get_image_features(self, pixel_values):
        return self.vision(pixel_values=pixel_values).image_embeds

    def get_text_features(self, embeddings):
        return self.text_projection(embeddings)


AutoConfig.register("tiny-llm2clip", TinyLLM2CLIPConfig)
AutoModel.register(TinyLLM2CLIPConfig, TinyLLM2CLIPModel)

TEXTS = ["a red circle", "two blue squares on the left of a green triangle", "a small yellow star", "dog"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm2clip")
    torch.manual_seed(0)
    TinyLLM2CLIPModel(TinyLLM2CLIPConfig()).save_pretrained(root / "vision")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "vision"
    )
    tok = build_word_tokenizer(TEXTS, max_length=64)
    suffix = TEMPLATES["llama3"][1]
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", suffix]})
    llm = LlamaModel(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
        )
    )
    llm.save_pretrained(root / "llm2vec")
    tok.save_pretrained(root / "llm2vec")
    return root / "vision", root / "llm2vec"


def test_text_embeddings_are_mean_pooled_text_tokens_through_the_projection(dirs):
    vision, text = dirs
    enc = load_encoder(f"llm2clip:{vision},{text}")
    got = enc.encode_texts(TEXTS).numpy()  # one left-padded batch of different lengths
    # Independent computation, one text at a time without padding.
    clip = AutoModel.from_pretrained(vision).eval()
    llm = AutoModel.from_pretrained(text).eval()
    prefix, suffix = TEMPLATES["llama3"]
    expected = []
    with torch.no_grad():
        for t in TEXTS:
            ids = enc.tokenizer(prefix + t + suffix, return_tensors="pt")["input_ids"]
            n = len(enc.tokenizer(t + suffix, add_special_tokens=False)["input_ids"])
            assert n < ids.shape[1]  # the template prefix is not pooled
            pooled = llm(input_ids=ids).last_hidden_state[0, -n:].mean(0)
            expected.append(torch.nn.functional.normalize(clip.get_text_features(pooled[None]), dim=-1)[0].numpy())
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    assert enc.dim == 12 and enc.name.startswith("llm2clip:")


def test_images_use_the_checkpoint_vision_tower(dirs):
    from PIL import Image

    vision, text = dirs
    enc = load_encoder(f"llm2clip:{vision},{text}")
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    clip = AutoModel.from_pretrained(vision).eval()
    proc = CLIPImageProcessor.from_pretrained(vision)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(clip.get_image_features(**proc(images=images, return_tensors="pt")), dim=-1)
    np.testing.assert_allclose(enc.encode_images(images).numpy(), ref.numpy(), atol=1e-5)


def test_bad_llm2clip_specs(dirs, tmp_path):
    from modgap.errors import ModgapError

    vision, _ = dirs
    with pytest.raises(ModgapError, match="expected llm2clip:VISION_DIR,LLM2VEC_DIR"):
        load_encoder(f"llm2clip:{vision}")
    with pytest.raises(ModgapError, match="no such model directory"):
        load_encoder(f"llm2clip:{vision},{tmp_path / 'missing'}")
