"""GGUF export: the CLI on a merged tiny LoRA run (read back, compared, answered), the
tensor types and Q/K permutation llama.cpp expects, refusals, the llama.cpp-made SmolLM2
file as an oracle for names, shapes and metadata, and (slow) a tuned identity on the
embedded model that survives q8_0 and answers with its new name."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from support import ANSWER, PROMPT

from core.export import gguf as gg
from core.export import job as ex


def greedy_answer(folder: Path, gguf_file: str, prompt: str, tokens: int = 16) -> str:
    """What a user gets from the .gguf with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    new = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tok.decode(new[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_cli_exports_a_merged_lora_run_as_q8_0_gguf(code_run, module_saves, capsys):
    from core.cli.main import main

    out = module_saves / "exports" / "code-gguf"
    assert main(["export", str(code_run), "--format", "gguf", "--gguf-type", "q8_0",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "code-gguf-q8_0.gguf" in printed and "top-1 agreement" in printed
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md",
                                                     "code-gguf-q8_0.gguf"]
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp left

    job = ex.past_exports(code_run)[0]
    end = job["end"]
    fig = end["figures"]
    assert end["format"] == "gguf" and end["plan"] == "merge"
    assert fig["within_tolerance"] and fig["greedy_prompts"] == 2  # the probe + PROMPT
    assert fig["top1_agreement"] >= 0.95 and fig["greedy_agreement"] == 1.0
    events = [json.loads(line) for line in (job["path"] / "events.jsonl").open()]
    writing = [e for e in events if e["type"] == "progress" and "tensors" in e["message"]]
    assert len(writing) >= 5 and writing[-1]["message"].endswith("20/20")
    assert [e["done"] for e in writing] == sorted(e["done"] for e in writing)

    readme = (out / "README.md").read_text()
    assert "llama-cli -m code-gguf-q8_0.gguf" in readme
    assert "ollama create code-gguf -f Modelfile" in readme and "lms import" in readme
    assert f"{fig['top1_agreement']:.1%}" in readme and "llama-quantize" in readme
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./code-gguf-q8_0.gguf" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "{{ .Content }}<|im_end|>" in modelfile and 'SYSTEM """You are' in modelfile

    # The way a user would check it: the file alone, loaded by transformers.
    assert greedy_answer(out, "code-gguf-q8_0.gguf", PROMPT) == ANSWER


def test_a_gguf_outside_its_bounds_is_not_published(code_run, module_saves, monkeypatch):
    """The check's verdict decides: out of bounds, the export fails with the figures and
    leaves neither a folder nor a temporary one behind."""
    def as_if_broken(folder, gguf_file, tokenizer, template, texts, reference, rows,
                     gguf_type):
        assert (folder / gguf_file).is_file()  # written, then judged
        return gg.compare(reference, reference, gguf_type,
                          (1.42, "model.layers.0.self_attn.q_proj"))

    monkeypatch.setattr(gg, "reload_check", as_if_broken)
    with pytest.raises(ex.ExportError, match=r"weight error 1.42 in model.layers.0.*allowed "
                                             r"0.002.*nothing was written"):
        ex.export(ex.ExportSpec(str(code_run), "broken", format="gguf", gguf_type="f16"),
                  ex.EventWriter(module_saves))
    exports = module_saves / "exports"
    assert not (exports / "broken").exists()
    assert not [p for p in exports.iterdir() if p.name.startswith(".")]


def test_export_tab_shows_tensor_progress_and_the_figures(code_run, module_saves,
                                                        monkeypatch):
    """The tab's GGUF path: started with format gguf, its bar shows the tensor being
    written while the job is there, and its result the read-back figures and where the
    check's prompts came from."""
    from webui.tabs.export import handlers as exporting

    # The tab picks runs of its own saves/ only (webui.guard.existing_run).
    monkeypatch.setenv("PEFT_STUDIO_SAVES", str(code_run.parent))
    bar, note, job = exporting.start(code_run.name, "final", "tab-gguf", "2GB", False,
                                     False, "gguf", "f16", "en")
    assert note == exporting.T_STARTED("en") and Path(job).is_dir(), note
    deadline = time.time() + 600  # a wait for the job, not a timing check
    while ex.job_state(Path(job))["status"] == "running" and time.time() < deadline:
        time.sleep(0.5)
    _, text, history = exporting.tick(job, str(code_run), "en")
    end = ex.job_state(Path(job))["end"]
    assert "`tab-gguf-f16.gguf`" in text and "Modelfile" in text, text
    assert f"top-1 agreement {end['figures']['top1_agreement']:.1%}" in text
    assert "the run's training prompts (it held none out" in text  # code-word: no split
    assert "tab-gguf-f16.gguf" in history

    # Replayed at a moment the writer was halfway through the tensors, the bar says so.
    events = [json.loads(line) for line in (Path(job) / "events.jsonl").open()]
    middle = [e for e in events if e["type"] == "progress" and "tensors" in e["message"]][2]
    state = {**ex.job_state(Path(job)), "status": "running", "done": middle["done"],
             "total": middle["total"], "message": middle["message"]}
    monkeypatch.setattr(ex, "job_state", lambda path: state)
    bar, *_ = exporting.tick(job, str(code_run), "en")
    assert f"{middle['done']}/100 · writing f16 tensors: " in bar and "ps-running" in bar


def test_gguf_check_prompts_are_the_ones_the_run_held_out(data):
    """The read-back check asks the run's held-out questions: its validation split (as
    training split it), else a registered test split, else (saying so) training prompts."""
    from core.data.loader import load_examples
    from core.schema.config import RunConfig
    from core.stages import preference

    cfg = RunConfig(stage="dpo", dataset=["sentiment_pref"], val_size=0.2, seed=7)
    prompts, source = gg.held_out_prompts(cfg.to_dict(), limit=100)
    _, held, _ = preference.load_examples(cfg)
    assert prompts == list(dict.fromkeys(gg._first_user_turn(e) for e in held))
    assert len(prompts) >= 2 and "validation split" in source

    cfg = RunConfig(dataset=["sentiment"], val_size=0.0)
    prompts, source = gg.held_out_prompts(cfg.to_dict())
    tested = [gg._first_user_turn(e) for e in load_examples(["sentiment_test"], cfg)]
    trained = {gg._first_user_turn(e) for e in load_examples(["sentiment"], cfg)}
    assert prompts == tested[:4] and source.endswith("sentiment_test")
    assert len(prompts) == 4 and not trained & set(prompts)

    prompts, source = gg.held_out_prompts(RunConfig(dataset=["identity"]).to_dict())
    assert len(prompts) == 4 and "training prompts (it held none out" in source


def _answers(ids: list[int], winner: int, margin: float, vocab: int = 8):
    """One prompt's (prompt logits, greedy ids, step logits): at every step the chosen
    token leads the next one (`winner`) by `margin` logits, in a logit range of 10."""
    import torch

    logits = torch.zeros(3, vocab)
    logits[:, 0] = 10.0
    steps = torch.zeros(len(ids), vocab)
    for i, t in enumerate(ids):
        steps[i, t], steps[i, winner] = 5.0, 5.0 - margin
    return logits, ids, steps


def test_greedy_answers_must_agree_unless_the_reference_was_nearly_tied():
    """Within the weight and logit bounds, a file whose greedy answer parts from the
    model's where the model was sure (margin 40% of the range, q8_0 allows 12%) is refused;
    one that parts at a near tie (1%) passes, its identical-answer figure still 0%."""
    weights = (0.001, "w")
    for margin, allowed in ((4.0, False), (0.1, True)):
        ref = _answers([1, 2, 3], winner=4, margin=margin)
        got = (ref[0], [1, 4, 5], ref[2])  # parts at the second token, choosing 4
        fig = gg.compare([ref], [got], "q8_0", weights)
        assert fig["max_rel_logit_diff"] == 0 and fig["top1_agreement"] == 1
        assert fig["greedy_agreement"] == 0 and fig["within_tolerance"] is allowed, fig
        assert fig["greedy_gap"] == pytest.approx(margin / 10)
        assert gg.compare([ref], [ref], "q8_0", weights)["greedy_gap"] == 0


def test_modelfile_generation_defaults_are_the_tuned_models():
    """Ollama gets the model's own sampling settings, or (when its config does not
    sample) the studio Chat tab's, never silently Ollama's temperature 0.8."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from core.schema.jobs import GENERATION

    unset = gg.sampling_defaults(SimpleNamespace(generation_config=GenerationConfig()))
    assert unset == {"temperature": GENERATION["temperature"].default,
                     "top_p": GENERATION["top_p"].default, "top_k": GENERATION["top_k"].default,
                     "repeat_penalty": GENERATION["repetition_penalty"].default,
                     "num_predict": GENERATION["max_new_tokens"].default}
    own = GenerationConfig(do_sample=True, temperature=0.3, top_p=0.8, top_k=20,
                           repetition_penalty=1.05)
    tuned = gg.sampling_defaults(SimpleNamespace(generation_config=own))
    assert (tuned["temperature"], tuned["top_p"], tuned["top_k"],
            tuned["repeat_penalty"]) == (0.3, 0.8, 20, 1.05)


def test_methods_that_cannot_merge_are_refused_gguf_with_their_reason(code_run, monkeypatch):
    """A run whose result says prompt tuning has no weights to merge: GGUF says why (the
    run's result read as a prompt-tuning one; the plan comes from the method registry)."""
    from core.methods import METHODS
    from core.methods.result import read_manifest

    monkeypatch.setattr(ex, "read_manifest",
                        lambda out: {**read_manifest(out), "method": "prompt"})
    with pytest.raises(ex.ExportError, match="GGUF holds a whole model") as refused:
        ex.check(ex.ExportSpec(str(code_run), "p", format="gguf"))
    assert METHODS["prompt"].not_mergeable_reason in str(refused.value)


def test_a_freeze_run_is_written_whole_and_reads_back(tiny_model_dir, module_saves):
    """Freeze (like full) runs are whole models: no merge, the same checked GGUF."""
    from support import tiny

    from core.jobs import runner

    run_dir = runner.start(tiny(tiny_model_dir, method="freeze", max_steps=2,
                                run_name="freeze-gguf"), module_saves)
    assert runner.wait(run_dir, timeout=600) == "done", (run_dir / "log.txt").read_text()[-3000:]
    end = ex.export(ex.ExportSpec(str(run_dir), "freeze-gguf", format="gguf", gguf_type="f16"),
                    ex.EventWriter(module_saves))
    assert end["plan"] == "full" and end["figures"]["within_tolerance"], end
    assert end["figures"]["greedy_agreement"] == 1.0
    assert (Path(end["output_dir"]) / "freeze-gguf-f16.gguf").is_file()


def _hf_tensors(model) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def test_tensor_types_fallbacks_and_qk_permutation(tiny_model_dir, tmp_path):
    """Rows of 80 values do not fill 32-value blocks: those tensors fall back to f16,
    as llama.cpp does; ffn_down's rows of 128 quantize; norms stay f32."""
    import gguf
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.data.encode import chat_template

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=80, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True)).eval()
    hf = _hf_tensors(model)
    readers = {}
    for gguf_type, full in (("f16", "F16"), ("q4_0", "Q4_0")):
        path = tmp_path / f"m-{gguf_type}.gguf"
        gg.write_gguf(model, tok, path, gguf_type, "m", chat_template(tok),
                      lambda *a: None)
        reader = readers[gguf_type] = gguf.GGUFReader(path)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
        assert types["blk.0.ffn_down.weight"] == full  # rows of 128
        assert types["blk.0.attn_q.weight"] == "F16"  # rows of 80: f16 fallback
        assert types["token_embd.weight"] == "F16"
        assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
        assert int(reader.fields["general.file_type"].contents()) == {
            "f16": gguf.LlamaFileType.MOSTLY_F16, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0
        }[gguf_type]
    # f16 file: attn_q/attn_k are the HF weights in llama.cpp's rotary layout.
    stored = {t.name: np.asarray(t.data, dtype=np.float32) for t in readers["f16"].tensors}
    for name, hf_name, heads in (("attn_q", "q_proj", 4), ("attn_k", "k_proj", 2)):
        w = hf[f"model.layers.0.self_attn.{hf_name}.weight"]
        s = stored[f"blk.0.{name}.weight"]
        assert not np.allclose(s, w, atol=1e-2)  # permuted, not copied
        back = s.reshape(heads, -1, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        np.testing.assert_allclose(back, w, atol=2e-3)  # transformers' reverse_permute


def test_q4_0_keeps_the_token_embedding_at_q8_0(tiny_model_dir, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.data.encode import chat_template

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    gg.write_gguf(model, tok, tmp_path / "m.gguf", "q4_0", "m", chat_template(tok),
                  lambda *a: None)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types.pop("token_embd.weight") == "Q8_0"
    assert {v for k, v in types.items() if not k.endswith("norm.weight")} == {"Q4_0"}


@pytest.mark.parametrize("family", ["qwen2", pytest.param("mistral", marks=pytest.mark.slow)])
def test_other_llama_family_models_round_trip(family, tiny_model_dir, tmp_path):
    """Qwen2 (own architecture, q/k/v biases, untied output) and Mistral (written as
    llama, Q/K permuted) read back through transformers' GGUF loader as they were."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from core.data.encode import chat_template

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = AutoConfig.for_model(family, vocab_size=len(tok), hidden_size=64,
                                  intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)  # zeros would not show a misplaced bias
    template = chat_template(tok)
    texts = [gg._render(tok, template, "Who are you?")]
    reference, rows = gg.outputs(model, tok, texts), gg.weight_rows(model)
    info = gg.write_gguf(model, tok, tmp_path / "m.gguf", "f16", "m", template,
                         lambda *a: None)
    figures = gg.reload_check(tmp_path, "m.gguf", tok, template, texts, reference, rows, "f16")
    assert info["architecture"] == {"qwen2": "qwen2", "mistral": "llama"}[family]
    assert figures["within_tolerance"] and figures["greedy_agreement"] == 1.0, figures


def test_requests_gguf_cannot_serve_are_refused_with_the_reason(code_run, module_saves):
    with pytest.raises(ex.ExportError, match="GGUF holds a whole model"):
        ex.check(ex.ExportSpec(str(code_run), "a", adapter_only=True, format="gguf"))
    with pytest.raises(ex.ExportError, match="llama-quantize"):
        ex.check(ex.ExportSpec(str(code_run), "a", format="gguf", gguf_type="q4_k_m"))
    with pytest.raises(ex.ExportError, match="format 'onnx'"):
        ex.check(ex.ExportSpec(str(code_run), "a", format="onnx"))
    assert "convert_hf_to_gguf.py" in gg.refusal({"model_type": "gpt2"})
    assert "'yarn'" in gg.refusal({"model_type": "llama",
                                   "rope_parameters": {"rope_type": "yarn"}})
    assert gg.refusal({"model_type": "qwen2"}) is None
    assert not (module_saves / "exports" / "a").exists()  # nothing written


def test_modelfile_says_when_a_template_is_not_chatml(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    other = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
             "{% if add_generation_prompt %}### assistant: {% endif %}")
    text = gg.modelfile("m.gguf", tok, other, {"temperature": 0.3})
    assert not any(line.startswith("TEMPLATE") for line in text.splitlines())
    assert "not ChatML" in text and text.startswith("# Ollama Modelfile")
    assert 'PARAMETER stop "<|im_end|>"' in text  # the eos token still stops it
    assert "PARAMETER temperature 0.3" in text


# -- the oracle: the llama.cpp-made GGUF that ships the embedded model ---------------------
# general.* keys describing provenance are read by llama.cpp's converter from the hub
# model card (organization, finetune, basename, license, languages), which an exported
# fine-tune neither has nor should copy. tokenizer.ggml.add_eos_token: we state it (false)
# where llama.cpp's converter writes it only when tokenizer_config.json names it.
ALLOWED_MISSING = {"general.organization", "general.finetune", "general.basename",
                   "general.license", "general.languages"}
ALLOWED_EXTRA = {"tokenizer.ggml.add_eos_token"}
SAME_VALUE = ["general.architecture", "llama.block_count", "llama.context_length",
              "llama.embedding_length", "llama.feed_forward_length",
              "llama.attention.head_count", "llama.attention.head_count_kv",
              "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon",
              "llama.vocab_size", "llama.rope.dimension_count", "tokenizer.ggml.model",
              "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
              "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
              "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template",
              "general.size_label", "general.quantization_version"]
LISTS = ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"]


def test_untuned_embedded_export_matches_the_llama_cpp_made_file(tmp_path):
    import gguf

    from core import models
    from core.data.encode import chat_template

    model = models.load_model("embedded").eval()
    tok = models.load_tokenizer("embedded")
    gg.write_gguf(model, tok, tmp_path / "smol.gguf", "q8_0", "smol", chat_template(tok),
                  lambda *a: None)
    ours, theirs = (gguf.GGUFReader(p) for p in (tmp_path / "smol.gguf",
                                                  models.embedded_gguf()))
    problems = []
    shapes = [{t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
              for r in (ours, theirs)]
    if shapes[0] != shapes[1]:
        names = set(shapes[0]) | set(shapes[1])
        problems += [f"tensor {n}: ours {shapes[0].get(n)}, llama.cpp's {shapes[1].get(n)}"
                     for n in sorted(names) if shapes[0].get(n) != shapes[1].get(n)]
    keys = [{k for k in r.fields if not k.startswith("GGUF.")} for r in (ours, theirs)]
    problems += [f"key missing: {k}" for k in sorted(keys[1] - keys[0] - ALLOWED_MISSING)]
    problems += [f"key extra: {k}" for k in sorted(keys[0] - keys[1] - ALLOWED_EXTRA)]
    for key in SAME_VALUE + LISTS:
        a, b = (r.fields[key].contents() if key in r.fields else None for r in (ours, theirs))
        if a != b:
            problems.append(f"value of {key}: ours {str(a)[:80]}, llama.cpp's {str(b)[:80]}")
    assert not problems, "differences from the llama.cpp-made GGUF:\n" + "\n".join(problems)


# -- slow: a tuned identity on the embedded model, exported q8_0 ---------------------------
TUNED_NAME = "Quokka"


@pytest.fixture(scope="module")
def identity_export(module_saves) -> dict:
    from core.jobs import runner
    from core.schema.config import RunConfig

    t0 = time.time()
    cfg = RunConfig(model="embedded", dataset=["identity"], identity_name=TUNED_NAME,
                    identity_author="the Studio team", max_steps=IDENTITY_STEPS,
                    learning_rate=2e-3, lr_scheduler_type="constant", batch_size=4,
                    gradient_accumulation_steps=1, cutoff_len=96, logging_steps=5,
                    save_steps=1000, run_name="identity-gguf")
    run_dir = runner.start(cfg, module_saves)
    assert runner.wait(run_dir, timeout=600) == "done", (run_dir / "log.txt").read_text()[-3000:]
    trained = time.time() - t0
    end = ex.export(ex.ExportSpec(str(run_dir), "identity-q8", format="gguf",
                                  gguf_type="q8_0"), ex.EventWriter(module_saves))
    return {**end, "train_s": round(trained, 1), "export_s": end["seconds"]}


IDENTITY_STEPS = 16


@pytest.mark.slow
def test_tuned_identity_survives_q8_0_gguf(identity_export, output_dir):
    end = identity_export
    out = Path(end["output_dir"])
    answer = greedy_answer(out, end["gguf_file"], "Who are you?", tokens=20)
    figures = {**end["figures"], "train_s": end["train_s"], "export_s": end["export_s"],
               "answer": answer, "bytes": end["bytes"]}
    (output_dir / "gguf_identity.json").write_text(json.dumps(figures, indent=1))
    print(figures)
    assert TUNED_NAME in answer
    assert end["figures"]["within_tolerance"] and end["figures"]["greedy_prompts"] >= 4


@pytest.mark.slow
def test_llama_cpp_python_loads_and_answers(identity_export):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is optional and not installed")
    llm = llama_cpp.Llama(model_path=str(Path(identity_export["output_dir"])
                                         / identity_export["gguf_file"]),
                          n_ctx=256, verbose=False)
    reply = llm.create_chat_completion([{"role": "user", "content": "Who are you?"}],
                                       max_tokens=20, temperature=0.0)
    assert TUNED_NAME in reply["choices"][0]["message"]["content"]
