"""Tiny random-weight transformers shared by the transformer tests (and by tests/lxt_oracle.py,
which rebuilds the same models from a saved spec in another process).

Every builder is seeded, float32, in eval mode with dropout 0, and returns ``(model, spec)``:
``spec`` is a JSON-able dict holding what another process needs to rebuild the identical model
(module and class name, config, attention implementation).  ``save(dir, model, spec, inputs,
target)`` writes it next to the state dict and the inputs; ``load(dir)`` rebuilds it.  Nothing is
downloaded: configs are written out in full here.
"""
import importlib
import json
import os

import torch

def _randomize(model, seed, std=0.2):
    """Seeded normal weights everywhere (HF and torchvision init some weights to zero or 1,
    which would hide rule errors: zero heads give zero relevance, unit norms hide the affine
    part).  Norm scales stay around 1 so that activations do not vanish over the layers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype.is_floating_point:
                r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                leaf = name.rsplit(".", 1)[-1]
                is_norm = "norm" in name.lower() or "ln_" in name or "LayerNorm" in name
                if is_norm and leaf == "weight" and p.dim() == 1:
                    # Gemma's RMSNorm scales by (1 + w): keep w small there
                    base = 0.0 if "gemma" in type(model).__name__.lower() else 1.0
                    p.copy_((base + 0.1 * r).to(p.dtype))
                else:
                    p.copy_((std * r).to(p.dtype))
    return model


def _hf(model_type, cls_name, module, attn, seed, **cfg):
    import transformers
    conf_cls = transformers.AutoConfig.for_model(model_type).__class__
    config = conf_cls(**cfg)
    spec = {"kind": "hf", "module": module, "class": cls_name, "attn": attn,
            "config": config.to_dict(), "seed": seed}
    return build_from_spec(spec, seed=seed), spec


def build_from_spec(spec, seed=None):
    """The model described by ``spec``; with ``seed`` its weights are drawn here, without it they
    are left to be loaded from a state dict.  Classes are looked up at call time (after any
    monkey patching of the module by the caller)."""
    if seed is not None:
        torch.manual_seed(seed)
    if spec["kind"] == "hf":
        import transformers
        mod = importlib.import_module(spec["module"])
        cls = getattr(mod, spec["class"])
        cfg = dict(spec["config"])
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        config._attn_implementation = spec["attn"]
        model = cls(config)
        assert model.config._attn_implementation == spec["attn"], model.config._attn_implementation
    elif spec["kind"] == "vit":
        from torchvision.models import vision_transformer
        model = vision_transformer.VisionTransformer(**spec["config"])
    else:
        raise ValueError(spec["kind"])
    model = model.float().eval()
    if seed is not None:
        _randomize(model, seed)
    return model


def gpt2(attn="eager", seed=0):
    return _hf("gpt2", "GPT2LMHeadModel", "transformers.models.gpt2.modeling_gpt2", attn, seed,
               vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=4,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def bert(attn="eager", seed=1):
    return _hf("bert", "BertForSequenceClassification", "transformers.models.bert.modeling_bert",
               attn, seed, vocab_size=61, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, max_position_embeddings=16,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=5,
               classifier_dropout=0.0)


def llama(attn="eager", seed=2):
    return _hf("llama", "LlamaForCausalLM", "transformers.models.llama.modeling_llama", attn,
               seed, vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
               rms_norm_eps=1e-6, attention_dropout=0.0, tie_word_embeddings=False)


def qwen2(attn="eager", seed=3):
    return _hf("qwen2", "Qwen2ForCausalLM", "transformers.models.qwen2.modeling_qwen2", attn,
               seed, vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
               rms_norm_eps=1e-6, attention_dropout=0.0, tie_word_embeddings=False,
               use_sliding_window=False)


def gemma3(attn="eager", seed=4):
    return _hf("gemma3_text", "Gemma3ForCausalLM", "transformers.models.gemma3.modeling_gemma3",
               attn, seed, vocab_size=61, hidden_size=32, intermediate_size=48,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               max_position_embeddings=32, rms_norm_eps=1e-6, attention_dropout=0.0,
               query_pre_attn_scalar=8, sliding_window=4, sliding_window_pattern=2,
               final_logit_softcapping=None, attn_logit_softcapping=None)


def vit(seed=5):
    spec = {"kind": "vit", "seed": seed,
            "config": dict(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                           hidden_dim=32, mlp_dim=64, num_classes=7, dropout=0.0,
                           attention_dropout=0.0)}
    return build_from_spec(spec, seed=seed), spec


BUILDERS = {"gpt2": gpt2, "bert": bert, "llama": llama, "qwen2": qwen2, "gemma3": gemma3}


def text_inputs(model, batch=2, seq=7, seed=0, pad=True):
    """inputs_embeds (from the model's own embedding of random ids) and an attention mask; with
    ``pad`` the second sequence has its last two positions padded (mask 0).  For causal models
    the explained position (the last one) must be a real token, so padding is on the left
    there."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad and batch > 1:
        if getattr(model.config, "is_decoder", False) or model.config.model_type != "bert":
            mask[1, :2] = 0
        else:
            mask[1, -2:] = 0
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids).detach().clone()
    return {"inputs_embeds": emb, "attention_mask": mask}


def image_inputs(spec, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = spec["config"]["image_size"]
    return torch.randn(batch, 3, s, s, generator=gen)


def save(path, model, spec, inputs, extra=None):
    """Write spec.json, state.pt and inputs.pt under ``path`` (created)."""
    os.makedirs(path, exist_ok=True)
    spec = dict(spec, **(extra or {}))
    with open(os.path.join(path, "spec.json"), "w") as fh:
        json.dump(spec, fh)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               os.path.join(path, "state.pt"))
    torch.save(inputs, os.path.join(path, "inputs.pt"))


def load(path):
    """(model, spec, inputs) as saved by ``save`` (classes looked up now)."""
    with open(os.path.join(path, "spec.json")) as fh:
        spec = json.load(fh)
    model = build_from_spec(spec)
    state = torch.load(os.path.join(path, "state.pt"))
    model.load_state_dict(state, strict=True)
    inputs = torch.load(os.path.join(path, "inputs.pt"))
    return model.eval(), spec, inputs
