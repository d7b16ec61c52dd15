"""A whole Hugging Face causal LM as one .gguf file for llama.cpp, Ollama and LM Studio.

One job: model + tokenizer -> NAME-TYPE.gguf + Modelfile + README.md, then the file is read
back with transformers (`from_pretrained(dir, gguf_file=...)`, which dequantizes) and its
weights, logits, tokenizer and greedy answers compared with the model it came from. Nothing
is reported as written until the comparison is within the type's bounds (TOLERANCE).

Written the way llama.cpp's convert_hf_to_gguf.py writes Llama-family models, with the
`gguf` package's own writer, tensor name map and quantizers:
- tensors under llama.cpp's names; Q and K projections of `llama` permuted into GGML's
  rotary layout (LlamaModel.permute; transformers reverses it on load);
- 1-D tensors (norms, biases) in f32; block types (q8_0, q5_*, q4_*) only for rows
  divisible by the 32-value block, else f16, as llama.cpp falls back; the token embedding
  (and output) stays q8_0 in 4- and 5-bit files, as llama-quantize keeps the output weights
  at higher precision (and as the llama.cpp-made SmolLM2 file shipped with the studio does);
- the BPE tokenizer (tokens, types, merges, special ids, add_bos/add_eos), its llama.cpp
  pre-tokenizer name found by the same hash llama.cpp uses, and the chat template.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.export.common import PROBE, ExportError, ExportFormat
from core.schema.jobs import GGUF_TYPES

TYPES = GGUF_TYPES
OTHER_TYPES = ("Other types (Q4_K_M, Q5_K_M, Q6_K, ...) are made by llama.cpp's "
               "`llama-quantize`: export f16, then `llama-quantize NAME-f16.gguf "
               "NAME-Q4_K_M.gguf Q4_K_M`.")
# HF model_type -> (llama.cpp architecture, Q/K permuted). llama.cpp writes Mistral as llama.
ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False),
         "qwen3": ("qwen3", False), "qwen3_moe": ("qwen3moe", False), "phi3": ("phi3", False),
         "gemma2": ("gemma2", False), "gemma3_text": ("gemma3", False)}
# Bounds per type, measured on SmolLM2-135M-Instruct and the tiny test Llama (figures in
# README-gguf-section.md): (largest relative RMS error of any weight tensor as transformers
# reads it back, largest |logit difference| / reference logit range, share of positions
# whose top-1 token must agree). The weight bound is what catches a wrong layout: a file
# with unpermuted Q/K reads back with errors near 1.4, while 4-bit rounding stays near 0.1
# (on a 135M model q4_0's logits drift as far as a broken file's, so logits alone cannot
# tell them apart there).
TOLERANCE = {"f16": (0.002, 0.01, 0.99), "bf16": (0.01, 0.03, 0.97),
             "q8_0": (0.02, 0.06, 0.90), "q5_1": (0.15, 0.4, 0.6), "q5_0": (0.15, 0.4, 0.6),
             "q4_1": (0.2, 0.6, 0.5), "q4_0": (0.2, 0.6, 0.5)}
ROWS_CHECKED = 64  # rows of every weight kept to compare with the file as read back
GREEDY_TOKENS = 24
# llama.cpp's convert_hf_to_gguf.py: the text whose token ids identify a BPE pre-tokenizer.
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple "
          "emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 "
          "3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
          "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE "
          "you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
PRE_BY_HASH = {  # the Llama-family entries of llama.cpp's table
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}
Progress = Callable[[int, int, str], None]  # (done, total, message), as progress events


def file_name(name: str, gguf_type: str) -> str:
    return f"{name}-{gguf_type}.gguf"


def refusal(config: dict[str, Any]) -> str | None:
    """Why a model with this config.json cannot be written as GGUF here, or None."""
    model_type = config.get("model_type")
    if model_type == "mixtral":
        return ("mixtral: llama.cpp keeps Mixtral as a llama model with experts, which "
                "transformers' GGUF reader cannot load back, so this exporter could not verify "
                "the file it wrote; export safetensors and convert it with llama.cpp's "
                "convert_hf_to_gguf.py")
    if model_type not in ARCHS:
        return (f"GGUF export supports {', '.join(ARCHS)}; this model is "
                f"{model_type!r}. Export safetensors and convert it with llama.cpp's "
                "convert_hf_to_gguf.py")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    # Gemma 3 keeps one set per attention kind ({"full_attention": {...}, ...}).
    for part in [p for p in rope.values() if isinstance(p, dict)] or [rope]:
        kind = part.get("rope_type", part.get("type", "default"))
        if kind != "default":
            return (f"rope scaling {kind!r} is not written by this exporter (llama.cpp "
                    "stores it as extra tensors); export safetensors and convert it with "
                    "llama.cpp's convert_hf_to_gguf.py")
    if model_type == "qwen3_moe" and not config.get("norm_topk_prob", True):
        return ("qwen3_moe: norm_topk_prob is false, and llama.cpp always normalises the "
                "chosen experts' weights in this family (every released Qwen3-MoE does); "
                "export safetensors")
    scalar, head = config.get("query_pre_attn_scalar"), config.get("head_dim")
    if scalar is not None and scalar != head:
        return (f"{model_type}: query_pre_attn_scalar {scalar} is not the head size {head} "
                "(Gemma 2 27B), and llama.cpp picks that scale by model size, which this "
                "exporter does not write; export safetensors and convert it with llama.cpp's "
                "convert_hf_to_gguf.py")
    return None


def config_of(trained: Path, base: str) -> dict[str, Any] | None:
    """The config.json a run's model has, read without loading it (None when unknown)."""
    from core import models

    for folder in (trained, Path(models.resolve(base).location)):
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return None


# -- tensors -----------------------------------------------------------------------------
def _permute(w: Any, n_head: int) -> Any:
    # convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half layout -> GGML's pairs.
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _qtype(gguf_name: str, data: Any, gguf_type: str) -> Any:
    from gguf import GGMLQuantizationType as Q

    if data.ndim <= 1:
        return Q.F32
    wanted = Q[gguf_type.upper()]
    if wanted.name[1] in "45" and gguf_name in ("token_embd.weight", "output.weight"):
        wanted = Q.Q8_0
    if wanted not in (Q.F16, Q.BF16) and data.shape[-1] % 32:  # 32-value blocks
        return Q.F16
    return wanted


def _tensors(model: Any, arch: str, permute: bool) -> list[tuple[str, Any]]:
    """(llama.cpp name, float32 numpy array) for every weight, in the model's order."""
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    out = []
    for hf_name, tensor in _split_experts(model.state_dict()):
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no llama.cpp name for tensor {hf_name!r}: this model has a "
                              f"part llama.cpp's {arch} does not know")
        data = tensor.detach().float().cpu().numpy()
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            data = data + 1  # Gemma's RMSNorm scales by 1 + w; llama.cpp stores 1 + w
        if permute and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, cfg.num_attention_heads)
        elif permute and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, cfg.num_key_value_heads)
        out.append((name, data))
    return out


def _split_experts(state: dict[str, Any]) -> list[tuple[str, Any]]:
    """The state dict with an MoE's fused experts as llama.cpp keeps them: transformers
    5 holds each layer's experts as 3-D parameters (`mlp.experts.gate_up_proj`, [experts,
    2 x size, hidden], gate first; `mlp.experts.down_proj`), llama.cpp gate, up and down
    apart (`ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`)."""
    out = []
    for name, tensor in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            stem, half = name.removesuffix("gate_up_proj"), tensor.shape[1] // 2
            out += [(f"{stem}gate_proj.weight", tensor[:, :half]),
                    (f"{stem}up_proj.weight", tensor[:, half:])]
        elif name.endswith("mlp.experts.down_proj"):
            out.append((f"{name}.weight", tensor))
        else:
            out.append((name, tensor))
    return out


# -- metadata ----------------------------------------------------------------------------
def _add_hparams(w: Any, cfg: Any, arch: str, gguf_type: str, n_params: int) -> None:
    import gguf

    rope = getattr(cfg, "rope_parameters", None) or {}
    heads = cfg.num_attention_heads
    w.add_type(gguf.GGUFType.MODEL)
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{gguf_type.upper()}"])
    if arch in ("llama", "phi3"):  # their set_gguf_parameters in convert_hf_to_gguf.py
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    elif getattr(cfg, "head_dim", None):  # Qwen3, Gemma: heads need not split hidden_size
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if arch.startswith("gemma"):  # Gemma2Model/Gemma3Model.set_gguf_parameters
        w.add_sliding_window(cfg.sliding_window)
        if arch == "gemma2":
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if getattr(cfg, "num_experts", None):  # Qwen3-MoE
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer ("default" when unknown)."""
    ids = tokenizer.encode(CHKTXT)  # with special tokens, as llama.cpp hashes it
    return PRE_BY_HASH.get(hashlib.sha256(str(ids).encode()).hexdigest(), "default")


def _looks_special(token: str) -> bool:
    # convert_hf_to_gguf.py does_token_look_special, for the Llama family's tokens
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def _vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if token in added:
            special = decoder[i].special or _looks_special(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def _add_tokenizer(w: Any, tokenizer: Any, vocab_size: int, template: str) -> str:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "BPE" or state.get("decoder", {}).get("type") != "ByteLevel":
        decoder = (state.get("decoder") or {}).get("type")
        raise ExportError("GGUF export writes byte-level BPE tokenizers (GPT-2 style, as "
                          "SmolLM2, Llama 3, Qwen2/Qwen3 and Mistral Nemo use); this model's "
                          f"is {state['model']['type']} with a {decoder} decoder "
                          "(SentencePiece-style, as Gemma's, Phi-3's and Llama 2's): export "
                          "safetensors and convert it with llama.cpp's convert_hf_to_gguf.py")
    tokens, types = _vocab(tokenizer, vocab_size)
    pre = pre_tokenizer(tokenizer)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m)
                        for m in state["model"]["merges"]])
    for kind, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                      ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            add(token_id)
    probe = tokenizer("a")["input_ids"]
    w.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    w.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    w.add_add_space_prefix(json.dumps(state.get("pre_tokenizer")).find(
        '"add_prefix_space": true') >= 0)
    w.add_chat_template(template)
    return pre


def write_gguf(model: Any, tokenizer: Any, path: Path, gguf_type: str, name: str,
               template: str, progress: Progress) -> dict[str, Any]:
    """Write `model` (a merged or whole HF model) as GGUF; returns what was written."""
    import gguf
    from gguf.quants import quantize

    reason = refusal(model.config.to_dict())
    if reason:
        raise ExportError(reason)
    arch, permute = ARCHS[model.config.model_type]
    tensors = _tensors(model, arch, permute)
    n_params = sum(int(a.size) for _, a in tensors)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    _add_hparams(w, model.config, arch, gguf_type, n_params)
    pre = _add_tokenizer(w, tokenizer, model.config.vocab_size, template)
    types: dict[str, int] = {}
    every = max(1, len(tensors) // 20)
    for i, (tname, data) in enumerate(tensors, 1):
        qtype = _qtype(tname, data, gguf_type)
        w.add_tensor(tname, quantize(data, qtype), raw_dtype=qtype)
        types[qtype.name] = types.get(qtype.name, 0) + 1
        if i % every == 0 or i == len(tensors):
            progress(20 + 60 * i // len(tensors), 100,
                     f"writing {gguf_type} tensors: {i}/{len(tensors)}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": arch, "pre_tokenizer": pre, "tensor_types": types,
            "parameters": n_params}


# -- checking by reading back ------------------------------------------------------------
def _first_user_turn(example: dict[str, Any]) -> str | None:
    # SFT examples hold "messages"; preference ones (DPO/ORPO/KTO) a "prompt" conversation.
    turns = example.get("messages") or example.get("prompt") or []
    if isinstance(turns, str):
        return turns
    return next((m["content"] for m in turns if m.get("role") == "user"), None)


def held_out_prompts(run_settings: dict[str, Any], limit: int = 4) -> tuple[list[str], str]:
    """(prompts, where they come from): the first user turns of the examples the run did
    not train on, so the check asks the file questions the tuning was not fitted to.

    In order: the run's validation split (val_size, split exactly as training split it);
    else the registered test split of one of its datasets (the Evaluate tab's default);
    else, the run having held nothing out, its training prompts, and the source says so."""
    from core.data.loader import load_examples, load_for_stage, split_train_eval
    from core.data.registry import test_sets
    from core.schema.config import RunConfig

    def firsts(examples: list[dict[str, Any]]) -> list[str]:
        users = [u for ex in examples if (u := _first_user_turn(ex))]
        return list(dict.fromkeys(users))[:limit]

    try:
        cfg = RunConfig(**run_settings)
        examples = load_for_stage(cfg)  # mixed as training mixed them
    except Exception:  # a dataset gone since training: the probe prompt still checks
        return [], "the probe only (the run's data is no longer readable)"
    # The split training made: these are the rows the run's validation loss was computed
    # on, never trained on.
    _, held_out = split_train_eval(examples, cfg.seed, cfg.val_size)
    if held_out:
        held = firsts(held_out)
        if held:
            return held, "the run's validation split (held out from training)"
    tests = [t for t, of in test_sets().items() if of in cfg.dataset]
    try:
        held = firsts(load_examples(tests, cfg)) if tests else []
    except Exception:  # an unreadable test split: fall through to the training prompts
        held = []
    if held:
        return held, f"the held-out test split {', '.join(tests)}"
    return firsts(examples), ("the run's training prompts (it held none out: no validation "
                              "fraction and no registered test split)")


def _render(tokenizer: Any, template: str, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, chat_template=template)


def outputs(model: Any, tokenizer: Any, texts: list[str]) -> list[tuple[Any, list[int], Any]]:
    """(prompt logits, greedy continuation ids, the logits each greedy step chose from,
    one row per generated token) of each rendered prompt."""
    import torch

    result = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            logits = model(**ids).logits[0].float()
            gen = model.generate(**ids, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                 temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id,
                                 output_scores=True, return_dict_in_generate=True)
        steps = torch.stack([row[0].float() for row in gen.scores])
        result.append((logits, gen.sequences[0, ids["input_ids"].shape[1]:].tolist(), steps))
    return result


def greedy_gap(ref_ids: list[int], ref_steps: Any, got_ids: list[int], span: float) -> float:
    """0 when the greedy answers are identical; else, at the first token where they part,
    how far (as a share of the logit range) the reference model ranked the token the file
    chose below its own choice. A file whose logits are off by at most d can only part
    from the reference where that gap is under 2d: a larger one is a real disagreement."""
    k = next((i for i, (r, g) in enumerate(zip(ref_ids, got_ids, strict=False)) if r != g),
             None)
    if k is None:
        return 0.0  # identical, or one ended (eos) where the other went on: same answer
    return float(ref_steps[k][ref_ids[k]] - ref_steps[k][got_ids[k]]) / span


def weight_rows(model: Any) -> dict[str, Any]:
    """The first rows of every weight, in float32: enough to check the file's layout."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return {k: v[:ROWS_CHECKED].detach().float().clone() for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight") and not k.endswith("inv_freq")}


def weight_error(reference: dict[str, Any], model: Any) -> tuple[float, str]:
    """(largest relative RMS error, its tensor) of `model`'s weights against reference."""
    loaded = model.state_dict()
    worst = (0.0, "")
    for name, ref in reference.items():
        if name not in loaded:
            raise ExportError(f"the GGUF, read back, has no weight {name!r}")
        got = loaded[name][:ROWS_CHECKED].float()
        err = float((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-12))
        worst = max(worst, (err, name))
    return worst


def compare(reference: list[tuple[Any, list[int], Any]],
            loaded: list[tuple[Any, list[int], Any]], gguf_type: str,
            weights: tuple[float, str]) -> dict[str, Any]:
    """Figures of the GGUF model against the reference, and whether they are in bounds."""
    rel, agree, positions, same, gap = 0.0, 0, 0, 0, 0.0
    for (ref, ref_ids, ref_steps), (got, got_ids, _) in zip(reference, loaded, strict=True):
        span = float(ref.max() - ref.min()) or 1.0
        rel = max(rel, float((ref - got).abs().max()) / span)
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        positions += ref.shape[0]
        same += int(ref_ids == got_ids)
        gap = max(gap, greedy_gap(ref_ids, ref_steps, got_ids, span))
    max_weight, max_rel, min_top1 = TOLERANCE[gguf_type]
    top1 = agree / positions
    # Greedy answers must agree: identical, or parting only where the reference itself
    # was nearly tied, within what the type's logit bound allows (see greedy_gap).
    max_gap = 2 * max_rel
    return {"max_weight_error": weights[0], "worst_weight": weights[1],
            "max_rel_logit_diff": rel, "top1_agreement": top1,
            "greedy_agreement": same / len(reference), "greedy_prompts": len(reference),
            "greedy_gap": gap,
            "tolerance": {"max_weight_error": max_weight, "max_rel_logit_diff": max_rel,
                          "min_top1_agreement": min_top1, "max_greedy_gap": max_gap},
            "within_tolerance": weights[0] <= max_weight and rel <= max_rel
            and top1 >= min_top1 and gap <= max_gap}


def reload_check(folder: Path, gguf_file: str, tokenizer: Any, template: str,
                 texts: list[str], reference: list[tuple[Any, list[int]]],
                 rows: dict[str, Any], gguf_type: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded_tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    mismatched = [t for t in texts if loaded_tok(t, add_special_tokens=False)["input_ids"]
                  != tokenizer(t, add_special_tokens=False)["input_ids"]]
    if mismatched:
        raise ExportError("the GGUF's tokenizer, read back, splits the rendered prompt "
                          f"{mismatched[0][:80]!r} differently from the model's own")
    if loaded_tok.chat_template != template:
        raise ExportError("the GGUF's chat template, read back, differs from the model's")
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file,
                                                 config=_read_config(folder, gguf_file),
                                                 dtype=torch.float32).eval()
    figures = compare(reference, outputs(model, tokenizer, texts), gguf_type,
                      weight_error(rows, model))
    del model
    gc.collect()
    return figures


def _read_config(folder: Path, gguf_file: str) -> Any:
    """The model's config as transformers reads it from the GGUF, with the sizes the
    file carries that transformers 5.24 does not map (what llama.cpp reads): the head
    size (`attention.key_length`) of Qwen3, the experts' size of Qwen3-MoE; without them
    they would be read at their defaults."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), gguf_file=gguf_file)
    reader = GGUFReader(str(folder / gguf_file))
    arch = reader.fields["general.architecture"].contents()
    for key, attr in (("attention.key_length", "head_dim"),
                      ("expert_feed_forward_length", "moe_intermediate_size")):
        field = reader.fields.get(f"{arch}.{key}")
        if field is not None and hasattr(config, attr):
            setattr(config, attr, int(field.contents()))
    if hasattr(config, "query_pre_attn_scalar"):  # llama.cpp scales Gemma's by head size
        config.query_pre_attn_scalar = config.head_dim
    return config


# -- the files beside the .gguf ----------------------------------------------------------
def _chatml(messages: list[dict[str, str]], generation: bool = True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation else "")


def chatml_system(tokenizer: Any, template: str) -> str | None:
    """The template's default system prompt ("" for none) when the template is ChatML
    (as checked by rendering two conversations), else None: not translatable here."""
    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template,
                                             add_generation_prompt=True)

    chat = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    try:
        if render(chat) != _chatml(chat):
            return None
        alone = render(chat[1:2])
    except Exception:
        return None
    if alone == _chatml(chat[1:2]):
        return ""
    head, tail = "<|im_start|>system\n", "<|im_end|>\n" + _chatml(chat[1:2])
    if alone.startswith(head) and alone.endswith(tail):
        return alone[len(head):-len(tail)]
    return None


OLLAMA_CHATML = '''TEMPLATE """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""'''


def modelfile(gguf_file: str, tokenizer: Any, template: str, generation: dict[str, Any]) -> str:
    """An Ollama Modelfile: FROM, TEMPLATE (ChatML only), SYSTEM, stops, sampling."""
    lines = ["# Ollama Modelfile written by PEFT Studio: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_file}", ""]
    system = chatml_system(tokenizer, template)
    if system is None:
        lines += ["# The chat template is not ChatML and was not translated into Ollama's Go",
                  "# template syntax (a hand translation could silently differ). The Jinja",
                  "# template is inside the .gguf (tokenizer.chat_template): llama.cpp and",
                  "# LM Studio use it; for Ollama, add a TEMPLATE here by hand.", ""]
    else:
        lines += ["# The model's ChatML chat template, in Ollama's Go template syntax.",
                  OLLAMA_CHATML]
        if system:
            lines.append(f'SYSTEM """{system}"""')
        lines.append("")
    stops = [tokenizer.eos_token] + (["<|im_end|>"] if system is not None else [])
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(t for t in stops if t)]
    lines += [f"PARAMETER {k} {v}" for k, v in generation.items()]
    return "\n".join(lines) + "\n"


def sampling_defaults(model: Any) -> dict[str, Any]:
    """The sampling settings to chat with the tuned model, as Ollama PARAMETER names: its
    generation_config's when that samples, else the studio Chat tab's defaults (what the
    user tried the tuned model with), not Ollama's own, which differ (temperature 0.8)."""
    from core.schema.jobs import GENERATION

    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "do_sample", False):
        pairs = {"temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
                 "repeat_penalty": gen.repetition_penalty}
    else:
        # A config without do_sample is transformers' unset default, not a tuned choice.
        pairs = {"temperature": GENERATION["temperature"].default,
                 "top_p": GENERATION["top_p"].default, "top_k": GENERATION["top_k"].default,
                 "repeat_penalty": GENERATION["repetition_penalty"].default}
    pairs["num_predict"] = GENERATION["max_new_tokens"].default
    return {k: v for k, v in pairs.items() if v is not None}


def readme(name: str, gguf_file: str, gguf_type: str, info: dict[str, Any]) -> str:
    fig, tol = info["figures"], info["figures"]["tolerance"]
    types = ", ".join(f"{k} ×{v}" for k, v in sorted(info["tensor_types"].items()))
    return "\n".join([
        f"# {name} ({gguf_type} GGUF)", "",
        f"`{gguf_file}`: {info['parameters'] / 1e6:.1f}M parameters, llama.cpp architecture "
        f"`{info['architecture']}`, tensors {types}; tokenizer pre-tokenizer "
        f"`{info['pre_tokenizer']}`; chat template included. Exported by PEFT Studio from "
        f"run `{info['run']}` ({info['checkpoint']} result; {info['why']}).", "",
        *(["Warning: this tokenizer's pre-tokenizer is not one llama.cpp's converter "
           "knows, so it is written as `default`; llama.cpp may split some text "
           "differently from transformers.", ""] if info["pre_tokenizer"] == "default"
          else []),
        "## Checked by reading it back", "",
        "Loaded with transformers (`AutoModelForCausalLM.from_pretrained(folder, "
        f"gguf_file='{gguf_file}')`, and its tokenizer) and compared with the model it was "
        f"written from on {fig['greedy_prompts']} prompts "
        f"({fig.get('prompts_source', 'the probe and the run’s prompts')}):", "",
        "| figure | value | bound |", "|---|---|---|",
        f"| largest relative RMS weight error ({fig['worst_weight']}) | "
        f"{fig['max_weight_error']:.4f} | ≤ {tol['max_weight_error']} |",
        f"| largest logit difference / logit range | {fig['max_rel_logit_diff']:.4f} | "
        f"≤ {tol['max_rel_logit_diff']} |",
        f"| top-1 token agreement (all positions) | {fig['top1_agreement']:.1%} | "
        f"≥ {tol['min_top1_agreement']:.0%} |",
        f"| identical greedy answers ({GREEDY_TOKENS} tokens) | "
        f"{fig['greedy_agreement']:.0%} | reported |",
        f"| where greedy answers part: the model's margin for its own token / logit range | "
        f"{fig['greedy_gap']:.4f} | ≤ {tol['max_greedy_gap']:.3g} |", "",
        "## Use", "",
        f"- llama.cpp: `llama-cli -m {gguf_file} -cnv` (or `llama-server -m {gguf_file}`)",
        f"- Ollama: `ollama create {name} -f Modelfile`, then `ollama run {name}`",
        f"- LM Studio: `lms import {gguf_file}`, or drag the file into My Models",
        "", OTHER_TYPES.replace("NAME", name), ""])


def export_gguf(trained: Path, tmp: Path, how: str, name: str, gguf_type: str,
                progress: Progress) -> dict[str, Any]:
    """The GGUF export job's work: load, merge, write, read back and compare; progress
    in percent, most of it while tensors are quantized and written."""
    from core.data.encode import chat_template
    from core.methods import implementation
    from core.methods.result import load_trained, read_manifest

    if gguf_type not in TYPES:
        raise ExportError(f"GGUF type {gguf_type!r}: choose one of {', '.join(TYPES)}. "
                          + OTHER_TYPES)
    manifest = read_manifest(trained)
    progress(2, 100, "loading the trained model")
    model, tokenizer = load_trained(trained)
    model = model.float().eval()
    if how == "merge":
        progress(8, 100, "merging the adapter into the base weights")
        model = implementation(manifest["method"]).merge(model).eval()
    template = chat_template(tokenizer)
    held, source = held_out_prompts(manifest.get("settings") or {})
    texts = [_render(tokenizer, template, p) for p in [PROBE, *held]]
    progress(12, 100, f"reference logits and greedy answers on {len(texts)} prompts")
    reference = outputs(model, tokenizer, texts)
    rows = weight_rows(model)
    tmp.mkdir(parents=True)
    gguf_file = file_name(name, gguf_type)
    written = write_gguf(model, tokenizer, tmp / gguf_file, gguf_type, name, template,
                         progress)
    generation = sampling_defaults(model)
    del model
    gc.collect()
    progress(85, 100, "reading the GGUF back with transformers to check it")
    figures = reload_check(tmp, gguf_file, tokenizer, template, texts, reference, rows,
                           gguf_type)
    figures["prompts_source"] = f"the probe and {len(held)} of {source}" if held else source
    if not figures["within_tolerance"]:
        tol = figures["tolerance"]
        raise ExportError(
            f"the {gguf_type} GGUF does not reproduce the model: weight error "
            f"{figures['max_weight_error']:.3g} in {figures['worst_weight']} (allowed "
            f"{tol['max_weight_error']}), largest logit difference "
            f"{figures['max_rel_logit_diff']:.3g} of the logit range (allowed "
            f"{tol['max_rel_logit_diff']}), top-1 agreement {figures['top1_agreement']:.1%} "
            f"(needed {tol['min_top1_agreement']:.0%}), greedy answers parting where the "
            f"model preferred its own token by {figures['greedy_gap']:.3g} of the range "
            f"(allowed {tol['max_greedy_gap']:.3g}); nothing was written")
    (tmp / "Modelfile").write_text(modelfile(gguf_file, tokenizer, template, generation),
                                   encoding="utf-8")
    return {**written, "figures": figures, "gguf_file": gguf_file, "gguf_type": gguf_type,
            "max_abs_diff": figures["max_rel_logit_diff"],
            "tolerance": figures["tolerance"]["max_rel_logit_diff"],
            "dtype": gguf_type, "check": "transformers' GGUF loader against the merged model"}


def _refusal(spec: Any, trained: Path, base: str, how: str, why: str) -> None:
    if spec.gguf_type not in TYPES:
        raise ExportError(f"GGUF type {spec.gguf_type!r}: choose one of "
                          f"{', '.join(TYPES)}. {OTHER_TYPES}")
    if how == "adapter":
        raise ExportError(f"GGUF holds a whole model, and this export would be an adapter "
                          f"alone ({why}); export safetensors instead")
    try:
        config = config_of(trained, base)
    except Exception:  # an unresolvable base is the job's to report, with its reason
        config = None
    if config and (reason := refusal(config)):
        raise ExportError(reason)


def _write(trained: Path, tmp: Path, how: str, spec: Any, name: str, step: Any,
           events: Any) -> dict[str, Any]:
    def progress(done: int, total: int, message: str) -> None:
        events.emit("progress", done=done, total=total, message=message)
        print(message, flush=True)

    return export_gguf(trained, tmp, how, name, spec.gguf_type, progress)


def _summary(end: dict[str, Any]) -> str:
    fig = end["figures"]
    return (f"exported to {end['output_dir']} ({end['gguf_file']}, {end['bytes'] / 1e6:.1f} "
            f"MB); read back: logit difference {fig['max_rel_logit_diff']:.3g} of the range, "
            f"top-1 agreement {fig['top1_agreement']:.1%}, identical greedy answers "
            f"{fig['greedy_agreement']:.0%} of {fig['greedy_prompts']}")


FORMAT = ExportFormat(
    name="gguf", help="one file for llama.cpp, Ollama and LM Studio, with a Modelfile",
    refusal=_refusal, write=_write,
    card=lambda name, run_dir, trained, info, spec: readme(name, info["gguf_file"],
                                                           spec.gguf_type, info),
    files=lambda tmp, result: [result["gguf_file"]], summary=_summary)
