"""A new user's way through README.md and docs/search.md, where a message told them something the docs do not."""
import json

from tests import videos
from vmm.cli import main

HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]


def test_remove_refusal_names_every_option_remove_takes(tmp_path, capsys):
    # docs/search.md: `--remove` takes PATHs, `--library` and `--json`. Its refusal of an indexing option said it
    # "takes only PATHs and --library", so a script that passed --json beside --quiet dropped the --json too.
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", red, "--library", library, *HIST]) == 0
    capsys.readouterr()
    assert main(["index", red, "--library", library, "--remove", "--json", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --remove takes only PATHs, --library and --json; --quiet would be ignored, drop it\n"
    # what the message says is accepted is accepted, and removes the file
    assert main(["index", red, "--library", library, "--remove", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"library": library, "removed": 1, "not_found": []}
