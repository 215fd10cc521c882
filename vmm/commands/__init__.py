"""One module per ``vmm`` subcommand (see vmm/cli.py)."""


def set_threads(threads) -> None:
    """Apply ``--threads`` (None: torch's default), refusing a count below 1 in one line.

    >>> set_threads(None)
    """
    if threads is None:
        return
    from vmm.errors import VmmError
    if threads < 1:
        raise VmmError(f"--threads {threads}: pass at least 1 (or omit --threads for torch's default)")
    import torch
    torch.set_num_threads(threads)
