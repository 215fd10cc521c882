"""Slips a docs-reading user met: error lines that left out the fix that applies, and decoder counts taken from
the host's CPUs where the process may use fewer."""
import json
import os
import subprocess
import sys

import pytest

import retrieval.evaluate as ev
import vmm.data.synthetic.corpus as corpus
from tests import videos
from vmm.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_an_unknown_classify_model_names_the_zero_shot_models_too(tmp_path, capsys):
    """It listed only the K400 classifiers, which need a downloaded checkpoint, and not the video-text models
    that classify zero-shot into any --labels (docs/classify.md)."""
    video = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, 1.0)
    assert main(["classify", video, "--model", "color-histogram"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: model= (--model) color-histogram: unknown model; classifiers (with --checkpoint): "
                           "videomamba_m16_k400, ")
    zero_shot = line.split("video-text models (zero-shot, any --labels): ")[1].split(";")[0].split(", ")
    assert {"vmm_nano", "videomamba_m16_25m"} <= set(zero_shot)
    # each one named is classified zero-shot without a --checkpoint: none registered without released weights
    assert not {"vmm_nano_framemean", "videomamba_m16_mm", "videomamba_tiny"} & set(zero_shot)
    assert line.endswith("; or a save_pretrained / vmm train folder")


def test_a_missing_classify_input_names_folders_and_globs_as_the_fix(tmp_path, capsys):
    """`vmm classify holiday/` on a mistyped folder said "video holiday/ does not exist; pass the path of a video
    file", though folders and quoted globs are what it takes."""
    folder, file = str(tmp_path / "holiday") + os.sep, str(tmp_path / "gone.mp4")
    assert main(["classify", folder, "--model", "vmm_nano"]) == 2
    assert _one_error_line(capsys) == (f"error: folder {folder} does not exist; pass a video file, a folder of "
                                       "videos or a quoted glob")
    assert main(["classify", file, "--model", "vmm_nano"]) == 2
    assert _one_error_line(capsys) == (f"error: video {file} does not exist; pass a video file, a folder of videos "
                                       "or a quoted glob")


@pytest.fixture()
def small_container(monkeypatch):
    """A process allowed 2 CPUs (an affinity mask, as a container or taskset sets) of a 64-core host."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def eval_args(tmp_path):
    vids = tmp_path / "vids"
    vids.mkdir()
    videos.write_solid(str(vids / "a.mp4"), videos.RED, 1.0)
    (tmp_path / "ann.json").write_text(json.dumps([{"video": "a.mp4", "caption": "a red square"}]))
    return ["--annotations", str(tmp_path / "ann.json"), "--videos", str(vids), "--model", "vmm_nano", "--device",
            "cpu", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]


def _evaluated_workers(monkeypatch) -> list[int]:
    seen = []
    monkeypatch.setattr(ev, "evaluate", lambda config: seen.append(config.workers))  # as a non-zero rank: no report
    return seen


def test_eval_starts_as_many_decoders_as_the_cpus_it_may_use(small_container, eval_args, monkeypatch):
    """vmm eval and the retrieval benchmarks counted os.cpu_count(), the host's: 8 decoders for 2 usable CPUs,
    where vmm index starts at most 2."""
    seen = _evaluated_workers(monkeypatch)
    assert main(["eval", "msrvtt", *eval_args]) == 0
    assert ev.benchmark_main("msrvtt", eval_args) == 0
    assert main(["eval", "msrvtt", *eval_args, "--workers", "3"]) == 0
    assert seen == [2, 2, 3]


def test_eval_ranks_of_one_node_share_its_cpus(monkeypatch, eval_args):
    """As vmm index's ranks: 2 ranks on a node of 6 usable CPUs start 3 decoders each, not 6."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.setattr("index.ingest.cgroup_cpu_quota", lambda: None)
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    seen = _evaluated_workers(monkeypatch)
    assert main(["eval", "msrvtt", *eval_args]) == 0
    assert seen == [3]


def test_a_generated_corpus_uses_the_cpus_it_may_use(small_container, tmp_path, monkeypatch):
    """generate_corpus (vmm demo's first step) took min(4, os.cpu_count()): 4 encoding processes for 2 CPUs."""
    seen = []
    write = corpus._write_corpus

    def recorded(out, jobs, workers, contents):
        seen.append(workers)
        return write(out, jobs, workers, contents)
    monkeypatch.setattr(corpus, "_write_corpus", recorded)
    info = corpus.generate_corpus(tmp_path / "corpus", num_videos=4, seed=0)
    assert seen == [2] and len(list((info.out_dir / "videos").iterdir())) == 4


OUT_OF_MEMORY = """
import resource, sys
from vmm.cli import main
assert main(sys.argv[1:]) == 0  # every import and lazy load done once, so the limit below hits the model's weights
used = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (8 << 20), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a subprocess that imports torch and loads the model twice
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc")
def test_out_of_memory_in_a_search_names_no_option_search_lacks(tmp_path):
    """vmm search out of memory said "a run needs less memory with fewer --frames, a smaller --batch-size or a
    smaller model": it has neither option, and the library fixes its model."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    video, lib = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, 1.0), str(tmp_path / "lib")
    assert main(["index", video, "--library", lib, "--model", "vmm_nano", "--workers", "0", "--quiet",
                 "--device", "cpu"]) == 0
    r = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY, "search", lib, "a red square", "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 2 and "\n" not in err and err.startswith("error: out of memory ("), (r.returncode, err)
    assert err.endswith("); free memory (other programs, another job on the GPU)"), err


def _parsers() -> dict:
    from vmm.cli import build_parser
    from vmm.data.synthetic.corpus import build_parser as synthetic_parser
    from vmm.train import build_parser as train_parser
    return {**build_parser().commands, "train": train_parser(), "synthetic": synthetic_parser()}


def _shown(default) -> str:
    """A default as help and docs write it: 60.0 as 60, 3.0 as 3.0 where the docs say so (both accepted)."""
    return f"{default:g}" if isinstance(default, float) else str(default)


def test_a_default_that_help_shows_is_the_one_the_code_uses():
    """The test of the help texts checked that each says a default, not that it is the one used: a changed
    default=... left "[16]" in --help."""
    import re
    wrong = []
    for name, parser in _parsers().items():
        for action in parser._actions:
            if not action.option_strings or not isinstance(action.default, (int, float, str)) \
                    or isinstance(action.default, bool) or action.default == "==SUPPRESS==":
                continue
            said = re.search(r"\[([^\[\]]*)\]\s*$", action.help or "")
            if said and not re.match(rf"{re.escape(_shown(action.default))}(?![\w.])", said[1]):
                wrong.append(f"{name} {action.option_strings[-1]}: help [{said[1]}], default {action.default!r}")
    assert wrong == []


# The pages that give each command's defaults in prose or in an options table
DEFAULT_PAGES = {"README.md": ["demo", "encode", "index", "search", "classify", "eval"],
                 "docs/classify.md": ["classify"], "docs/evaluation.md": ["eval"], "docs/synthetic.md": ["synthetic"],
                 "docs/search.md": ["index", "search"], "docs/index.md": ["index"]}


def test_a_default_the_docs_give_is_the_one_the_code_uses():
    """What `--option N` (default X), `--option N` (X) and an options table's `| --option | X |` say is the default
    of that option in one of the page's commands."""
    import re
    from pathlib import Path
    parsers, repo, wrong, seen = _parsers(), Path(__file__).resolve().parents[1], [], 0
    said = re.compile(r"`(--[a-z][\w-]*|-k)(?: [^`]*)?`(?::[^`(]{0,40})? ?\((?:default:? )?`?([\w.]+)`?[,;)]"
                      r"|^\| `(--[a-z][\w-]*)` \| `?([\w.]+)`? \|", re.M)
    for page, commands in DEFAULT_PAGES.items():
        for match in said.finditer((repo / page).read_text(encoding="utf-8")):
            option, value = (match[1], match[2]) if match[1] else (match[3], match[4])
            defaults = {_shown(a.default) for c in commands for a in parsers[c]._actions if option in a.option_strings
                        and isinstance(a.default, (int, float, str)) and not isinstance(a.default, bool)}
            if not defaults or not re.fullmatch(r"[\d.]+|[a-z][\w]*_\w+|auto|flat", value):
                continue  # an option with no such default (a count, a filter), or words about it, not a value
            seen += 1
            if value not in defaults and not (value.replace(".", "", 1).isdigit() and
                                              any(float(value) == float(d) for d in defaults if d[0].isdigit())):
                wrong.append(f"{page}: {option} {value}, the code's {sorted(defaults)}")
    assert wrong == [] and seen >= 15, (wrong, seen)


@pytest.mark.parametrize("name, what", [("nope", "unknown model 'nope'"),
                                        ("videomamba_m16_k400", "model videomamba_m16_k400 is not a video-text model"),
                                        ("vmm_nano_framemean", "model vmm_nano_framemean has no released weights")])
def test_a_demo_model_name_it_cannot_run_names_those_it_can(name, what, tmp_path, capsys):
    """vmm demo --model NAME answered with every registered model (classifiers too), or asked for a --checkpoint the
    demo does not take; a classifier's weights were fetched from the hub before it was refused."""
    out = tmp_path / "demo"
    assert main(["demo", "--model", name, "--out", str(out), "--videos", "4"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {what}; pass as --model (model=) a save_pretrained / vmm train "
                           "folder, or one of ") and "--checkpoint" not in line
    names = line.split("or one of ")[1].split(", ")
    assert "vmm_nano" in names and "videomamba_m16_k400" not in names and "vmm_nano_framemean" not in names
    assert not out.exists()
