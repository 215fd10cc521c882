"""One module per ``vmm`` subcommand (see vmm/cli.py)."""
import os


def set_threads(threads) -> None:
    """Apply ``--threads`` (None: torch's default); vmm.cli has checked its range.

    >>> set_threads(None)
    """
    if threads is None:
        return
    import torch
    torch.set_num_threads(threads)


def check_library_readable(library: str) -> bool:
    """Whether ``library`` is a folder this user can list; a folder it cannot is refused in one line, since it
    would otherwise read as a folder without a catalog ("not a library", "no model given"). False when it is
    missing or not a folder: the caller's own checks name that.

    >>> check_library_readable("/nonexistent-library")
    False
    """
    from vmm.errors import VmmError
    try:
        os.listdir(library)
    except PermissionError as e:
        raise VmmError(f"library {library} is not readable ({e.strerror}); check its permissions") from None
    except OSError:
        return False
    return True


def refuse_blank(option: str, value, fix: str) -> None:
    """Refuse an option given as an empty or blank string, as an unset shell variable ("$OUT") passes it: Path("")
    is the working folder, and a blank name is a file no user meant to make.

    >>> refuse_blank("--json", "report.json", "pass a file path")
    >>> refuse_blank("--json", " ", "pass a file path, or leave it out")
    Traceback (most recent call last):
    vmm.errors.VmmError: --json is empty (' '); pass a file path, or leave it out
    """
    from vmm.errors import VmmError
    if isinstance(value, str) and not value.strip():
        raise VmmError(f"{option} is empty ({value!r}); {fix}")
