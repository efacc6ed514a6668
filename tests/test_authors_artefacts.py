"""The MiniLLM authors' artefacts, offline: their MMIDIDX corpora read in place, their instruction files converted
row for row, their released checkpoints in the registry and the planner, the replication recipe, and the report's
Table 1 section (#15).

Files are made here in the authors' exact formats: `.bin/.idx` pairs by a writer that follows the documented layout
(reference §6, `data_utils/indexed_dataset.py`) independently of takd's, and JSONL rows in each set's shape.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from takd.config import ConfigError
from takd.data import authors, mmidx, rows
from takd.data.corpus import PretrainingCorpus
from takd.models import registry
from takd.models.corpora import resolve_corpus

# ------------------------------------------------------------------------------------------------ MMIDIDX


def write_documented_shard(prefix: Path, items: list[list[int]], dtype) -> None:
    """The layout as documented: 9-byte magic, version 1 (<Q), dtype code (<B: 8 = uint16, 4 = int32), item
    count and document count (<Q each), sizes int32[], pointers int64[] (byte offsets), doc_idx int64[]."""
    code = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}[np.dtype(dtype)]
    with open(f"{prefix}.bin", "wb") as fh:
        for it in items:
            fh.write(np.asarray(it, dtype=dtype).tobytes())
    sizes = [len(it) for it in items]
    pointers, at = [], 0
    for n in sizes:
        pointers.append(at)
        at += n * np.dtype(dtype).itemsize
    docs = list(range(len(items) + 1))
    with open(f"{prefix}.idx", "wb") as fh:
        fh.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code))
        fh.write(struct.pack("<Q", len(items)) + struct.pack("<Q", len(docs)))
        fh.write(struct.pack(f"<{len(sizes)}i", *sizes) + struct.pack(f"<{len(pointers)}q", *pointers))
        fh.write(struct.pack(f"<{len(docs)}q", *docs))


@pytest.mark.parametrize("dtype,top", [(np.uint16, 65534), (np.int32, 151_000)])
def test_mmidx_shards_read_back_equal_in_place(tmp_path, dtype, top):
    rng = np.random.default_rng(0)
    shard0 = [rng.integers(0, top, size=n).tolist() for n in (512, 512, 17, 300)]
    shard1 = [rng.integers(0, top, size=512).tolist() for _ in range(3)]
    write_documented_shard(tmp_path / "train_0", shard0, dtype)
    write_documented_shard(tmp_path / "train_1", shard1, dtype)
    split = mmidx.IndexedSplit(tmp_path, "train")
    assert len(split) == 7 and len(split.shards) == 2 and split.dtype == np.dtype(dtype)
    for i, expected in enumerate(shard0 + shard1):
        assert split[i].tolist() == expected
    # read in place: items are views into the memory map of the .bin, nothing is copied or converted
    assert isinstance(split.shards[0].data, np.memmap) and not split[1].flags.owndata
    assert split.item_lengths().tolist() == [512, 512, 17, 300, 512, 512, 512]
    # takd's own writer (the built-in corpus) writes the same bytes
    mmidx.write_shard(tmp_path / "ours_0", shard0, dtype)
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours_0.{ext}").read_bytes() == (tmp_path / f"train_0.{ext}").read_bytes()


def test_mmidx_refuses_wrong_magic_and_truncated_bin(tmp_path):
    write_documented_shard(tmp_path / "train_0", [[1, 2, 3]] * 4, np.uint16)
    (tmp_path / "train_0.bin").write_bytes((tmp_path / "train_0.bin").read_bytes()[:10])
    with pytest.raises(mmidx.NotAnIndex, match="truncated"):
        mmidx.IndexedSplit(tmp_path, "train")
    (tmp_path / "valid_0.idx").write_bytes(b"NOTANIDX" * 8)
    (tmp_path / "valid_0.bin").write_bytes(b"")
    with pytest.raises(mmidx.NotAnIndex, match="magic"):
        mmidx.IndexedSplit(tmp_path, "valid")


def test_pretraining_batch_is_chunk_shifted_by_one(tmp_path):
    chunks = [list(range(k, k + 512)) for k in (0, 1000, 2000)]
    write_documented_shard(tmp_path / "train_0", chunks, np.uint16)
    b = PretrainingCorpus(tmp_path).batch([2, 0])
    assert b["input_ids"].shape == (2, 511) and b["labels"].shape == (2, 511)
    assert b["input_ids"][0].tolist() == chunks[2][:-1] and b["labels"][0].tolist() == chunks[2][1:]
    assert PretrainingCorpus(tmp_path).check_vocabulary(2512) is None
    assert "beyond the model's 2000 embeddings" in PretrainingCorpus(tmp_path).check_vocabulary(2000)


# ------------------------------------------------------------------------------------------------ rows
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n### Instruction:\n{i}\n\n### Input:\n"
                "{x}\n\n### Response:\n")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{i}\n\n### Response:\n")


def _authors_files(d: Path) -> dict[str, list[dict]]:
    """One small file per set, in each set's shape."""
    raw = [{"instruction": f"Name fact {k}.", "input": "" if k % 2 else f"Context {k}.", "output": f"Fact {k}.",
            "category": "open_qa"} for k in range(1005)]
    files = {
        "dolly/raw.jsonl": raw,
        "dolly/valid.jsonl": [{"instruction": "Who wrote it?", "input": "A book.", "output": "Someone."}],
        "self-inst/valid.jsonl": [{"instruction": "Sort these.", "input": "b a", "output": "a b",
                                   "prompt": ALPACA_INPUT.format(i="Sort these.", x="b a").replace("\n", "<n>")}],
        "Vicuna/valid.jsonl": [{"prompt": ALPACA.format(i="Plan a trip.").replace("\n", "<n>"),
                                "output": "Go north."}],
        "sinst/11_/valid.jsonl": [{"prompt": ALPACA.format(i="Translate."), "output": ["one answer here", "another"],
                                   "task": "task001"}],
        "uinst/11_/valid.jsonl": [{"instruction": f"Do {k}.", "input": "", "output": [f"done {k}"]}
                                  for k in range(10_003)],
    }
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    return files


def test_prepare_converts_each_authors_set_as_their_processing_keeps(tmp_path, monkeypatch):
    from takd.chain import prepare

    monkeypatch.setenv("TAKD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TAKD_SELFINST", raising=False)
    hub = tmp_path / "hub"
    files = _authors_files(hub)
    folder = {s.repo: s.repo.split("/")[1] for s in authors.SETS.values()}
    monkeypatch.setattr(prepare, "_download", lambda repo, names, **kw: (hub / folder[repo], "abc123"))
    for name in authors.SETS:
        prepare.prepare_dataset(name)
    # Dolly: their split, the first 1000 raw rows validate, the rest train; valid.jsonl is the test set
    valid, train = rows.load_rows("dolly", "valid"), rows.load_rows("dolly", "train")
    assert [r["instruction"] for r in valid] == [f"Name fact {k}." for k in range(1000)]
    assert [r["instruction"] for r in train] == [f"Name fact {k}." for k in range(1000, 1005)]
    assert rows.load_rows("dolly", "test")[0]["output"] == "Someone." and valid[0]["category"] == "open_qa"
    assert rows.format_prompt(valid[0]) == ALPACA_INPUT.format(i="Name fact 0.", x="Context 0.")
    assert rows.format_prompt(valid[1]) == ALPACA.format(i="Name fact 1.")
    # evaluation rows: the reference's own prompt (<n> -> newline) and every reference kept
    assert rows.format_prompt(rows.load_rows("selfinst", "test")[0]) == ALPACA_INPUT.format(i="Sort these.", x="b a")
    assert rows.format_prompt(rows.load_rows("vicuna", "test")[0]) == ALPACA.format(i="Plan a trip.")
    sni = rows.load_rows("sni", "test")[0]
    assert rows.references(sni) == ["one answer here", "another"] and sni["task"] == "task001"
    unni = rows.load_rows("unni", "test")
    assert len(unni) == 10_000 and unni[-1]["instruction"] == "Do 9999."  # --dev-num 10000: the first rows
    src = json.loads((rows.data_dir("vicuna") / "source.json").read_text())
    assert src == {"repo": "MiniLLM/Vicuna", "revision": "abc123", "files": {"test": "valid.jsonl"}}
    assert len(files["dolly/raw.jsonl"]) == len(valid) + len(train)


def test_prompt_only_rows_refuse_the_chat_format(tokenizer):
    from takd.data.examples import prompt_text

    row = authors.convert_row({"prompt": "P", "output": "O"}, "x")
    assert rows.format_prompt(row) == "P"
    with pytest.raises(ConfigError, match="prompt_format: alpaca"):
        prompt_text(row, tokenizer, "chat")
    with pytest.raises(ConfigError, match="instruction.*or `prompt`"):
        authors.convert_row({"output": "O"}, "x")
    with pytest.raises(ConfigError, match="output"):
        authors.convert_row({"prompt": "P", "output": [1]}, "x")


# ------------------------------------------------------------------------------------------------ corpora
def test_corpus_for_a_real_model_is_the_familys_never_the_toy_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TAKD_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="takd.prepare --corpus gpt2.*pt_dataset=builtin"):
        resolve_corpus("auto", "gpt2-120m")
    assert resolve_corpus("builtin", "gpt2-120m") == "builtin"  # asked for explicitly
    assert resolve_corpus("auto", "tiny-s") == "builtin"
    d = tmp_path / "corpora" / "gpt2" / "gpt2" / "512" / "10M"
    d.mkdir(parents=True)
    write_documented_shard(d / "train_0", [[5] * 512] * 2, np.uint16)
    assert resolve_corpus("auto", "gpt2-120m") == str(d) == resolve_corpus(None, "paper-init-gpt2-120m")
    with pytest.raises(ConfigError, match="takd.prepare --corpus opt"):
        resolve_corpus("auto", "opt-1.3b")
    with pytest.raises(ConfigError, match="no train_0.bin"):
        resolve_corpus(str(tmp_path / "nowhere"), "gpt2-120m")


def test_corpus_download_selects_the_familys_shards():
    flat = ["README.md", "train_0.bin", "train_0.idx", "valid_0.bin", "valid_0.idx"]  # synthetic listings
    per_family = ["README.md", "opt/512/20M/train_0.bin", "opt/512/20M/train_0.idx", "llama/512/20M/train_0.bin",
                  "llama/512/20M/train_0.idx"]
    assert authors.corpus_files(flat, "gpt2") == flat[1:]
    assert authors.corpus_files(per_family, "llama") == ["llama/512/20M/train_0.bin", "llama/512/20M/train_0.idx"]


def test_minillm_trains_its_pt_term_on_an_authors_format_corpus(trained_teacher, tmp_path, tokenizer):
    from takd.train.config import stage_config
    from takd.train.minillm.trainer import MiniLLMTrainer

    rng = np.random.default_rng(1)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for d, top in ((good, len(tokenizer)), (bad, 60_000)):
        d.mkdir()
        write_documented_shard(d / "train_0", [rng.integers(0, top, 65).tolist() for _ in range(8)], np.uint16)

    def cfg(corpus):
        c = stage_config("minillm", name="pt", student="tiny-s", teacher=str(trained_teacher), pt_dataset=str(corpus),
                         output_dir=str(tmp_path / corpus.name), max_steps=1, micro_batch_size=4, batch_size=4,
                         max_new_tokens=16, max_prompt_tokens=128, eval_every_steps=0, tensorboard=False)
        c.minillm.num_rollouts, c.minillm.rollout_batch_size = 8, 8
        return c

    t = MiniLLMTrainer(cfg(good))
    t.setup()
    assert t.corpus.directory == good and len(t.corpus) == 8
    assert torch.isfinite(torch.as_tensor(t.optimizer_step()["pt"]))
    with pytest.raises(ConfigError, match="beyond the model's"):
        MiniLLMTrainer(cfg(bad)).setup()


# ------------------------------------------------------------------------------------------------ registry, planner
def test_released_checkpoints_have_family_size_and_role():
    specs = registry.released()
    assert {s.role for s in specs} == set(registry.ROLES)
    for s in specs:
        base = registry.registry()[s.base]
        assert s.family == base.family and s.params_m == base.params_m and s.hf_id.startswith("MiniLLM/")
    gpt2 = registry.released(family="gpt2")
    assert len(gpt2) == 16 and registry.resolve("MiniLLM/MiniLLM-gpt2-120M").role == "minillm"
    assert registry.released_for("opt-6.7b", "init").hf_id == "MiniLLM/init-opt-6.7B"
    assert registry.resolve("paper-teacher-opt-13b").hf_id == "MiniLLM/teacher-OPT-13B"


def _plan(chain, tmp_path, **kw):
    from takd.chain.plan import build_plan
    from takd.chain.profiles import load_profile, profile_path

    return build_plan(chain, run_dir=tmp_path, profile=load_profile(profile_path("default")), **kw)


def test_a_chain_from_the_released_teacher_and_inits_plans_no_sft_stages(tmp_path):
    from takd.chain.plan import substitute_released

    chain, notes = substitute_released(["opt-13b", "opt-6.7b", "opt-1.3b"])
    assert chain == ["paper-teacher-opt-13b", "paper-init-opt-6.7b", "paper-init-opt-1.3b"] and len(notes) == 3
    stages = {s.name: s for s in _plan(chain, tmp_path, baselines=("kd",))}
    assert not [n for n, s in stages.items() if s.role in ("sft", "init")]
    ta, via, direct = (stages[n] for n in ("minillm-opt-13b-to-opt-6.7b", "minillm-opt-6.7b-to-opt-1.3b",
                                           "minillm-opt-13b-to-opt-1.3b"))
    assert (ta.config.teacher, ta.config.student, ta.depends_on) == ("paper-teacher-opt-13b", "paper-init-opt-6.7b",
                                                                     [])
    assert via.config.student == "paper-init-opt-1.3b" and via.depends_on == ["minillm-opt-13b-to-opt-6.7b"]
    assert direct.config.teacher == "paper-teacher-opt-13b" and direct.label == "direct"
    assert stages["baseline-kd-opt-1.3b"].config.student == "opt-1.3b"  # baselines start from the base model
    assert stages["eval-teacher"].config.model == "paper-teacher-opt-13b"
    init_eval = stages["eval-init-opt-1.3b"]
    assert init_eval.label == "init" and init_eval.config.teacher == "paper-teacher-opt-13b"


def test_a_released_minillm_model_teaches_as_an_assistant_but_is_no_student(tmp_path):
    stages = {s.name: s for s in _plan(["paper-teacher-opt-13b", "paper-minillm-opt-6.7b", "opt-1.3b"], tmp_path)}
    assert stages["minillm-opt-6.7b-to-opt-1.3b"].config.teacher == "paper-minillm-opt-6.7b"
    assert "eval-ta-opt-6.7b" in stages and "init-opt-1.3b" in stages
    with pytest.raises(ConfigError, match="already a finished minillm model.*paper-init-gpt2-120m"):
        _plan(["paper-teacher-gpt2-1.5b", "paper-minillm-gpt2-120m"], tmp_path)


def test_real_model_minillm_plan_refuses_submission_without_its_corpus(tmp_path, monkeypatch, capsys):
    from takd.chain import cli

    monkeypatch.setenv("TAKD_HOME", str(tmp_path / "home"))
    argv = ["--chain", "gpt2-1.5b,gpt2-120m", "--run-dir", str(tmp_path / "run"), "--cluster", "narval",
            "--account", "def-x", "--executor", "local"]
    assert cli.main(argv) == 0  # a dry run warns
    assert "takd.prepare --corpus gpt2" in capsys.readouterr().err
    monkeypatch.setattr(cli, "check_offline", lambda *a, **k: None)  # the models are not here either
    assert cli.main(argv + ["--submit"]) == 2
    assert "stage minillm-gpt2-1.5b-to-gpt2-120m: MiniLLM's PT loss" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_replicate_dry_run_lists_every_released_gpt2_checkpoint(capsys, tmp_path, monkeypatch):
    from takd.chain import replicate

    monkeypatch.setenv("TAKD_HOME", str(tmp_path))
    assert replicate.main(["--family", "gpt2", "--cluster", "narval", "--account", "def-x"]) == 0
    out = capsys.readouterr().out
    for spec in registry.released(family="gpt2"):
        assert spec.hf_id in out and f"eval-{spec.name} " in out
    assert "16 stages. Nothing written" in out
    stages = replicate.eval_stages(registry.released(family="gpt2"), tmp_path,
                                   replicate.parser().parse_args(["--family", "gpt2"]))
    assert all(s.config.datasets == list(replicate.PAPER_SETS) and s.config.seeds == [10, 20, 30, 40, 50]
               and s.config.max_new_tokens == 256 and s.config.max_prompt_tokens == 256 for s in stages)


# ------------------------------------------------------------------------------------------------ report
def _results(run: Path, stage: str, meta: dict, means: dict[str, float], plan_chain: list[str]) -> None:
    d = run / "stages" / f"eval-{stage}"
    d.mkdir(parents=True)
    (run / "plan.yaml").write_text(json.dumps({"chain": plan_chain}))
    rows_ = [{**meta, "stage": stage, "dataset": ds, "seed": seed, "metric": "rouge_l", "value": m + 0.1 * (k - 2)}
             for ds, m in means.items() for k, seed in enumerate((10, 20, 30, 40, 50))]
    pd.DataFrame(rows_).to_csv(d / "results.csv", index=False)


def test_report_puts_each_measured_cell_beside_the_papers(tmp_path):
    from takd.report.build import build_report
    from takd.report.paper import replication, table1

    rep_run, own_run = tmp_path / "replicate-gpt2", tmp_path / "own"
    _results(rep_run, "paper-minillm-gpt2-120m", {"model": "paper-minillm-gpt2-120m", "method": "minillm",
             "label": "paper-minillm-gpt2-120m", "teacher": ""}, {"dolly": 24.6, "sni": 20.0}, [])
    _results(rep_run, "paper-init-gpt2-120m", {"model": "paper-init-gpt2-120m", "method": "init",
             "label": "paper-init-gpt2-120m", "teacher": ""}, {"dolly": 20.0}, [])
    _results(own_run, "minillm-gpt2-1.5b-to-gpt2-120m", {"model": "gpt2-120m", "method": "minillm",
             "label": "direct", "teacher": "x"}, {"dolly": 23.0}, ["gpt2-1.5b", "gpt2-120m"])
    from takd.report.collect import collect

    rep = replication(collect([rep_run, own_run]))
    cells = {(r["model"], r["dataset"]): r for _, r in rep.iterrows()}
    assert set(cells) == {("paper-minillm-gpt2-120m", "dolly"), ("paper-minillm-gpt2-120m", "sni"),
                          ("gpt2-120m", "dolly")}  # the init has no Table 1 row
    dolly = cells[("paper-minillm-gpt2-120m", "dolly")]
    paper = table1().set_index(["family", "params", "method"]).loc[("gpt2", "120M", "minillm")]
    assert dolly["R-L paper"] == paper["dolly_rouge_l"] == 24.6 and dolly["paper in interval"] == "yes"
    assert cells[("paper-minillm-gpt2-120m", "sni")]["R-L paper"] == 25.3
    assert cells[("paper-minillm-gpt2-120m", "sni")]["paper in interval"] == "NO"
    assert cells[("gpt2-120m", "dolly")]["difference"] == pytest.approx(23.0 - 24.6)
    assert dolly["GPT-4 ours"] == "not run" and dolly["GPT-4 paper"] == 44.7
    report = build_report([rep_run, own_run], tmp_path / "report")
    md, html = report.read_text(), report.with_suffix(".html").read_text()
    assert "Against the paper: MiniLLM Table 1 (Gu et al., ICLR 2024; arXiv 2306.08543" in md
    assert "3 Table 1 cells measured; in 2 the paper's value lies outside" in md
    assert "<th>R-L paper</th>" in html and "not run" in html


def test_a_chain_not_from_the_papers_teacher_matches_no_table1_row():
    from takd.report.paper import table1_key

    assert table1_key("gpt2-120m", "direct", "gpt2-1.5b,gpt2-120m") == ("gpt2", "120M", "minillm")
    assert table1_key("gpt2-120m", "direct", "gpt2-760m,gpt2-120m") is None
    assert table1_key("gpt2-120m", "via-ta", "gpt2-1.5b,gpt2-340m,gpt2-120m") is None
    assert table1_key("gpt2-1.5b", "teacher", "gpt2-1.5b,gpt2-120m") == ("gpt2", "1.5B", "teacher")
    assert table1_key("paper-kd-opt-2.7b", "x", "") == ("opt", "2.7B", "kd")
    assert table1_key("tiny-s", "direct", "tiny-l,tiny-s") is None


@pytest.mark.parametrize("argv,expected", [
    (["--run-dir", "{tmp}/my run", "--executor", "slurm"], "contains a space, quote or shell character"),
    (["--datasets", "dolly,nope"], "unknown dataset 'nope'"),
    (["--sizes", "3b"], "the authors released gpt2 students of"),
    (["--roles", "teacher,boss"], "unknown role 'boss'"),
    (["--max-prompts", "-1"], "max_prompts must be >= 0"),
])
def test_replicate_refuses_bad_input_in_one_line_writing_nothing(argv, expected, tmp_path, capsys, monkeypatch):
    from takd.chain import replicate

    monkeypatch.setenv("TAKD_HOME", str(tmp_path / "home"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    run = tmp_path / "r"
    rc = replicate.main(["--family", "gpt2", "--submit", "--run-dir", str(run), *argv])
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not run.exists() and not (tmp_path / "my run").exists()
