"""Model registry, tiny family, tokenizers, built-in task data, real-data formats, offline errors."""

from __future__ import annotations

import pytest
import torch

from takd.config import ConfigError
from takd.data import builtin as builtin_task
from takd.data import corpus, examples, rows
from takd.models import loading, registry
from takd.paths import gpt2_bpe_dir, selfinst_file
from tests.conftest import needs_shared


def test_registry_has_the_paper_families():
    reg = registry.registry()
    for name in ["gpt2-120m", "gpt2-340m", "gpt2-760m", "gpt2-1.5b", "opt-125m", "opt-350m", "opt-1.3b",
                 "opt-2.7b", "opt-6.7b", "opt-13b", "llama-7b", "llama-13b", "tiny-s", "tiny-m", "tiny-l"]:
        assert name in reg, name
    assert reg["opt-13b"].hf_id == "facebook/opt-13b" and reg["opt-13b"].params_m > reg["opt-6.7b"].params_m
    assert reg["gpt2-340m"].hf_id == "gpt2-medium"
    assert len({reg[n].tokenizer for n in ["opt-125m", "opt-1.3b", "opt-13b"]}) == 1


def test_resolve_accepts_hub_ids_and_rejects_unknown_names():
    assert registry.resolve("EleutherAI/pythia-70m").hf_id == "EleutherAI/pythia-70m"
    with pytest.raises(ConfigError, match="unknown model 'opt-99b'"):
        registry.resolve("opt-99b")


def test_tiny_family_sizes_increase_and_forward_works(tokenizer):
    sizes = {}
    for name in ["tiny-s", "tiny-m", "tiny-l"]:
        m = loading.load_model(name)
        sizes[name] = loading.count_parameters(m)
        spec = registry.registry()[name]
        assert abs(sizes[name] / 1e6 - spec.params_m) / spec.params_m < 0.15, (name, sizes[name])
        ids = tokenizer("Hello there", return_tensors="pt", add_special_tokens=False)["input_ids"]
        assert m(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    assert sizes["tiny-s"] < sizes["tiny-m"] < sizes["tiny-l"]


def test_tiny_model_dir_is_a_loadable_hf_directory():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = loading.prepare_tiny("tiny-s")
    assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file() and (d / "COMPLETE").is_file()
    m = AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    assert m.config.vocab_size == len(tok)


def test_builtin_tokenizer_round_trips_and_is_deterministic(tokenizer):
    text = rows.format_prompt(builtin_task.generate_split("test")[0])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    from takd.data.tokenizers import train_builtin_bpe

    train_rows = builtin_task.generate_split("train", n=300)
    texts = [rows.format_prompt(r) + rows.references(r)[0] for r in train_rows]
    assert train_builtin_bpe(texts, 400).get_vocab() == train_builtin_bpe(texts, 400).get_vocab()


def test_builtin_task_is_deterministic_and_split():
    a, b = builtin_task.generate_split("train", seed=0), builtin_task.generate_split("train", seed=0)
    assert a == b and len(a) == builtin_task.SPLIT_SIZES["train"]
    assert builtin_task.generate_split("train", seed=1) != a
    test = builtin_task.generate_split("test")
    assert {r["task"] for r in test} == set(builtin_task.TASKS)
    for r in test:
        assert set(r) >= {"instruction", "input", "output"}
        if "labels" in r:
            assert r["output"] in r["labels"]
    assert len(builtin_task.pretraining_corpus(n_docs=10)) == 10


def test_builtin_world_has_the_designed_structure(tokenizer):
    """The world the embedded default is designed around (takd/data/builtin.py): open questions whose reference
    list is every valid answer, answers of 10-40 tokens, classification labels fixed by the world's facts."""
    world = builtin_task.build_world()
    assert len(world) == builtin_task.N_ANIMALS
    per_home = {h: sum(f["home"] == h for f in world.values()) for h in builtin_task.HOMES}
    assert set(per_home.values()) == {builtin_task.N_ANIMALS // len(builtin_task.HOMES)}
    test = builtin_task.generate_split("test")
    for r in test:
        refs = rows.references(r)
        if r["task"] == "name-home":
            home = r["instruction"].split("near the ")[1].split(" ")[0]
            valid = {builtin_task.describe(n, f) for n, f in world.items() if f["home"] == home}
            assert set(refs) == valid and len(refs) == per_home[home]
        elif r["task"] in ("colour", "food"):  # two-way choices answered with the animal's own fact
            fact = world[r["instruction"].split(" ")[2]][r["task"]]
            assert refs == [fact] and fact in r["labels"] and len(set(r["labels"])) == 2
    lengths = [len(tokenizer(rows.references(r)[0])["input_ids"]) for r in test if r["task"].startswith(("describe",
                                                                                                         "name-"))]
    assert min(lengths) >= 10 and max(lengths) <= 40
    train = builtin_task.generate_split("train", n=400)
    firsts = {rows.references(r)[0] for r in train if r["task"] == "name-home"}
    assert len(firsts) > len(builtin_task.HOMES)  # the SFT target is a random valid answer, not always the same


def test_a_tokenizer_cached_from_another_world_is_retrained(monkeypatch, tmp_path):
    from takd.models import loading

    monkeypatch.setenv("TAKD_HOME", str(tmp_path))
    first = loading.prepare_builtin_tokenizer()
    stamp = (first / loading.WORLD_FILE).read_text()
    (first / loading.WORLD_FILE).write_text("an older world\n")
    assert loading.prepare_builtin_tokenizer() == first and (first / loading.WORLD_FILE).read_text() == stamp


def test_alpaca_template_matches_reference():
    with_input = rows.format_prompt({"instruction": "Sum.", "input": "1 2", "output": "3"})
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nSum.\n\n### Input:\n1 2\n\n### Response:\n")
    without = rows.format_prompt({"instruction": "Hi.", "input": "", "output": "x"})
    assert "### Input" not in without and without.endswith("### Instruction:\nHi.\n\n### Response:\n")


def test_encode_drops_long_prompts_and_masks_prompt_tokens(tokenizer):
    valid = builtin_task.generate_split("valid", n=50)
    ex = examples.encode_rows(valid, tokenizer, max_prompt_tokens=10_000, max_response_tokens=8)
    assert len(ex) == 50 and all(e.response_ids[-1] == tokenizer.eos_token_id for e in ex)
    assert all(len(e.response_ids) <= 8 for e in ex)
    short = examples.encode_rows(valid, tokenizer, max_prompt_tokens=45, max_response_tokens=8)
    assert 0 < len(short) < 50 and all(len(e.prompt_ids) <= 45 for e in short)
    batch = examples.collate_sft(ex[:4], tokenizer.pad_token_id)
    for i, e in enumerate(ex[:4]):
        n_p, n_r = len(e.prompt_ids), len(e.response_ids)
        assert (batch["labels"][i, :n_p] == -100).all()
        assert batch["labels"][i, n_p: n_p + n_r].tolist() == e.response_ids
        assert (batch["labels"][i, n_p + n_r:] == -100).all()
    prompts = examples.collate_prompts(ex[:4], tokenizer.pad_token_id)
    assert (prompts["attention_mask"][:, -1] == 1).all()  # left padded


def test_epoch_sampler_resumes_exactly():
    s = examples.EpochSampler(10, seed=3)
    first = s.next_indices(7)
    state = s.state_dict()
    rest = s.next_indices(9)
    s2 = examples.EpochSampler(10, seed=3)
    s2.load_state_dict(state)
    assert s2.next_indices(9) == rest
    assert sorted(first + rest[:3]) == list(range(10))


def test_pack_corpus_chunks_stream(tokenizer, tmp_path):
    docs = builtin_task.pretraining_corpus(n_docs=50)
    corpus.pack_corpus(docs, tokenizer, 64, tmp_path / "pt")
    packed = corpus.PretrainingCorpus(tmp_path / "pt")
    n_tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert len(packed) == n_tokens // 64 and (tmp_path / "pt" / "train_0.bin").stat().st_size == len(packed) * 64 * 2
    b = packed.batch([0, 1])
    assert b["input_ids"].shape == (2, 63) and torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])


def test_missing_real_dataset_names_prepare_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TAKD_HOME", str(tmp_path))
    with pytest.raises(rows.DataNotPrepared, match="python -m takd.prepare --datasets dolly"):
        rows.load_rows("dolly", "train")


def test_hub_model_missing_offline_names_prepare_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not registry.is_available_offline("opt-125m")
    with pytest.raises(registry.ModelNotPrepared, match="python -m takd.prepare --models opt-125m"):
        loading.load_model("opt-125m")


@needs_shared
def test_gpt2_bpe_from_shared_files():
    from takd.data.tokenizers import gpt2_bpe

    tok = gpt2_bpe(gpt2_bpe_dir())
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
    assert len(tok) == 50257 and tok.eos_token_id == 50256


@needs_shared
def test_selfinst_file_loads_and_tokenises():
    from takd.data.tokenizers import gpt2_bpe

    tasks = rows.selfinst_rows(selfinst_file())
    assert len(tasks) == 252
    assert all(r["instruction"] and isinstance(r["output"], str) for r in tasks)
    tok = gpt2_bpe(gpt2_bpe_dir())
    ex = examples.encode_rows(tasks, tok, max_prompt_tokens=256, max_response_tokens=256)
    assert 240 <= len(ex) <= 252  # prompts over 256 tokens are dropped, as the reference does
    assert rows.load_rows("selfinst", "test")[0] == tasks[0]
