"""Common slips at the `vmm` command line: each ends in one line that names the fix."""
import json
import os

import pytest

from tests import videos
from vmm.cli import build_parser, main


@pytest.fixture()
def library(tmp_path, capsys):
    """A colour-histogram library of one red video (no model weights to load)."""
    path = str(tmp_path / "lib")
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    assert main(["index", red, "--library", path, "--model", "color-histogram", "--quiet"]) == 0
    capsys.readouterr()
    return path


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, line", [
    # argparse blamed the --library it could not see, not the misspelling
    (["index", "videos", "--libary", "lib"], "error: vmm index: unrecognized option --libary; did you mean --library? "
                                             "(`vmm index --help` lists the options)"),
    (["search", "LIB", "q", "--per-vidoe"], "error: vmm search: unrecognized option --per-vidoe; did you mean "
                                            "--per-video? (`vmm search --help` lists the options)"),
    (["search", "LIB", "q", "--reranks", "5"], "error: vmm search: unrecognized option --reranks; did you mean "
                                               "--rerank? (`vmm search --help` lists the options)"),
    (["index", "v", "--library=lib", "--facotry=Flat"], "error: vmm index: unrecognized option --facotry; did you "
                                                        "mean --factory? (`vmm index --help` lists the options)"),
    (["--verison"], "error: vmm: unrecognized option --verison; did you mean --version? (`vmm --help` lists the "
                    "options)"),
    # one dash, as ffmpeg or Go tools write long options: "required: --library", and for search a hint to give
    # "-video q.mp4" as a query after --
    (["index", "videos", "-library", "lib"], "error: vmm index: unrecognized option -library; did you mean "
                                             "--library? (`vmm index --help` lists the options)"),
    (["search", "LIB", "-video", "q.mp4"], "error: vmm search: unrecognized option -video; did you mean --video? "
                                           "(`vmm search --help` lists the options)"),
    (["index", "--version"], "error: vmm index: --version is an option of vmm itself: vmm --version (`vmm index "
                             "--help` lists the options)"),  # was "did you mean --json?"
], ids=["index-libary", "search-per-vidoe", "search-reranks", "index-facotry=", "verison", "index-one-dash",
        "search-one-dash", "index-version"])
def test_a_misspelt_option_names_the_one_meant(argv, line, capsys):
    assert _usage_error(argv, capsys) == line + "\n"


def test_prefixes_and_queries_are_no_misspellings(library, tmp_path, capsys):
    red = str(tmp_path / "red.mp4")
    assert main(["search", library, "--vid", red, "-k", "1", "--js"]) == 0  # argparse's unique prefixes still work
    assert json.loads(capsys.readouterr().out)[0]["rank"] == 1
    # A query after --, or with a space, is no option: it reaches the search (which refuses text for this model).
    for argv in (["--", "--per-vidoe"], ["--per-vidoe clip"]):
        assert main(["search", library, *argv]) == 2
        assert capsys.readouterr().err == "error: model color-histogram has no text tower; search it with video= " \
                                          "(--video) QUERY.mp4\n"


def test_swapped_search_arguments_are_named(library, capsys):
    # Was "library .../a red car does not exist; create it with `vmm index VIDEOS --library .../a red car`".
    assert main(["search", "a red car", library]) == 2
    assert capsys.readouterr().err == (f"error: the arguments look swapped: {library!r} is a library and 'a red car' "
                                       f"is no folder; give the library first: vmm search {library} 'a red car'\n")


def test_factory_words_in_any_case(tmp_path, capsys):
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    index = ["index", red, "--library", library, "--model", "color-histogram", "--quiet", "--factory"]
    assert main([*index, "hnsw32,flat"]) == 0  # failed with FAISS's "could not parse index string"
    with open(os.path.join(library, "index-state.json")) as f:
        assert json.load(f)["factory_setting"] == "HNSW32,Flat"


def test_factory_words_in_any_case_in_the_python_api(tmp_path):
    """build_library(factory="hnsw8,flat") got FAISS's parse error where `vmm index --factory` took it."""
    from index.encoder import ColorHistogramEncoder
    from index.ingest import build_library
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    build_library([red], str(tmp_path / "lib"), ColorHistogramEncoder(), workers=0, factory="hnsw8,flat")
    with open(os.path.join(tmp_path, "lib", "index-state.json")) as f:
        assert json.load(f)["factory_setting"] == "HNSW8,Flat"


def test_a_missing_library_advice_quotes_its_path(tmp_path, capsys):
    """The advice `vmm index VIDEOS --library PATH` did not run as printed for a path with a space."""
    missing = str(tmp_path / "my lib")
    assert main(["search", missing, "a red screen"]) == 2
    err = capsys.readouterr().err
    assert f"create it with `vmm index VIDEOS --library '{missing}'`" in err, err


def test_a_bad_factory_names_faiss_reason_without_its_source_line(tmp_path, capsys):
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    argv = ["index", red, "--library", str(tmp_path / "lib"), "--model", "color-histogram", "--factory", "Bogus42"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: index factory 'Bogus42' is not a valid FAISS factory string (could not parse index "
                          "string Bogus42); use 'auto', 'Flat'") and "index_factory.cpp" not in err, err


def test_device_help_is_the_same_where_the_option_is(capsys):
    commands = build_parser().commands
    helps = {name: next(a.help for a in commands[name]._actions if "--device" in a.option_strings)
             for name in ("index", "search")}
    assert helps["index"] == helps["search"] and "cuda[:N]" in helps["index"], helps


def test_a_library_name_with_a_stray_space_is_refused(library, tmp_path, capsys):
    # A pasted "lib " built a second library from scratch beside lib.
    red = str(tmp_path / "red.mp4")
    assert main(["index", red, "--library", library + " ", "--model", "color-histogram", "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: --library '{library} ' has a space at an end of its name, and "
                                       f"{library} is a library; drop the space (or index into a folder of another "
                                       "name)\n")
    assert not os.path.exists(library + " ")
