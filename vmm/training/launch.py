"""What the launcher tells a training process before accelerate starts: its rank and the number of processes.

torchrun and ``accelerate launch`` set ``RANK`` / ``WORLD_SIZE``; MPI launchers (Open MPI, Intel MPI, MVAPICH2) set
their own variables, which accelerate also reads. The start-up checks need both before any process group exists:
only process 0 prints warnings and probes the output folder, and the epoch plan needs the process count.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

# accelerate's own lists and order (accelerate.utils.environment.get_cpu_distributed_information): a variable it
# reads and these do not would make every process of such a launch rank 0 of 1 here.
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _first_set(names: tuple, environ: Mapping[str, str], default: int) -> int:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdecimal():  # a launcher's own variable holding something else is not ours to refuse
            return int(value)
    return default


def launch_rank(environ: Optional[Mapping[str, str]] = None) -> int:
    """This process's rank as the launcher set it (0 without a launcher).

    >>> launch_rank({"OMPI_COMM_WORLD_RANK": "3"}), launch_rank({"MV2_COMM_WORLD_RANK": "2"}), launch_rank({})
    (3, 2, 0)
    >>> launch_rank({"PMI_RANK": "n/a"})
    0
    """
    return _first_set(_RANK_VARS, os.environ if environ is None else environ, 0)


def launch_world_size(environ: Optional[Mapping[str, str]] = None) -> int:
    """The number of processes as the launcher set it (1 without a launcher).

    >>> launch_world_size({"WORLD_SIZE": "16"}), launch_world_size({"PMI_SIZE": "4"}), launch_world_size({})
    (16, 4, 1)
    """
    return _first_set(_SIZE_VARS, os.environ if environ is None else environ, 1)
