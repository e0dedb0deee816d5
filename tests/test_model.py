"""The embedded model built by `make model` (scripts/build_model.py) against llama.cpp on the original GGUF."""

from __future__ import annotations

import json
from collections import Counter

import torch
from gguf import GGUFReader

from export.roundtrip import llama, llama_greedy

QUESTION = "What is the capital of France?"


def test_corpus_is_varied_and_large_enough(corpus):
    counts = Counter(row["category"] for row in corpus)
    assert len(corpus) >= 300
    assert {"digits", "unicode", "code", "whitespace", "special", "chat"} <= set(counts)
    assert all(n >= 15 for n in counts.values()), counts


def _mismatches(tokenizer, llm, corpus) -> list[str]:
    bad = []
    for row in corpus:
        ours = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(row["text"].encode("utf-8"), add_bos=False, special=True)
        if ours != theirs:
            bad.append(f"{row['category']} {row['text'][:40]!r}: ours {ours[:10]} llama.cpp {theirs[:10]}")
    return bad


def test_tokenizes_exactly_like_llama_cpp_on_the_original_gguf(tokenizer, source_gguf, corpus):
    with llama(source_gguf, vocab_only=True) as llm:
        bad = _mismatches(tokenizer, llm, corpus)
    assert not bad, f"{len(bad)} of {len(corpus)} strings differ:\n" + "\n".join(bad[:10])


def test_decode_inverts_encode(tokenizer, corpus):
    for row in corpus:
        assert tokenizer.decode(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) == row["text"]


def test_eos_is_im_end_everywhere_and_pad_is_not_eos(model_dir, tokenizer):
    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == im_end == 2
    assert config["eos_token_id"] == im_end
    assert generation["eos_token_id"] in (im_end, [im_end])
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != im_end
    assert config["pad_token_id"] == generation["pad_token_id"] == tokenizer.pad_token_id
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer("hi")["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]  # no BOS added


def test_keeps_the_original_chat_template(tokenizer, source_gguf):
    original = GGUFReader(str(source_gguf)).fields["tokenizer.chat_template"].contents()
    assert tokenizer.chat_template == original
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_greedy_answer_matches_llama_cpp_on_the_original_gguf(hf_model, tokenizer, source_gguf):
    # Without the template's default system turn: on this tiny model the Q4_1 file's quantized matmuls
    # tip the longer prompt into a different answer (see ../shared/FACTS.md); the f16 round trip below
    # checks the full template render.
    prompt = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ours = _hf_greedy(hf_model, ids, 20)
    with llama(source_gguf, n_ctx=256) as llm:
        theirs = llama_greedy(llm, ids, 20)
    assert ours == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))
    assert tokenizer.decode(ours).startswith("The capital of France is Paris.")
    assert ours[-1] == tokenizer.eos_token_id  # it stops


def test_converts_back_to_a_bpe_gguf_that_llama_cpp_tokenizes_identically(roundtrip_gguf, tokenizer, corpus):
    fields = GGUFReader(str(roundtrip_gguf)).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"  # llama.cpp's name for byte-level BPE
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert len(fields["tokenizer.ggml.merges"].contents()) == 48900
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    with llama(roundtrip_gguf, vocab_only=True) as llm:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        assert llama_cpp.llama_vocab_type(vocab) == llama_cpp.LLAMA_VOCAB_TYPE_BPE
        bad = _mismatches(tokenizer, llm, corpus)
    assert not bad, "\n".join(bad[:10])


def test_roundtrip_gguf_answers_like_the_hf_model_and_stops_at_im_end(roundtrip_gguf, hf_model, tokenizer):
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ours = _hf_greedy(hf_model, ids, 20)
    with llama(roundtrip_gguf, n_ctx=256) as llm:
        assert llm.token_eos() == tokenizer.convert_tokens_to_ids("<|im_end|>")
        theirs = llama_greedy(llm, ids, 20)
        chat = llm.create_chat_completion(messages, temperature=0.0, max_tokens=40)  # the GGUF's embedded template
    assert theirs == ours
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert "Paris" in chat["choices"][0]["message"]["content"]
    assert "<|im_end|>" not in chat["choices"][0]["message"]["content"]
