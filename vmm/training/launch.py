"""What the launcher tells a training process before accelerate starts: its rank and the number of processes.

torchrun and ``accelerate launch`` set ``RANK`` / ``WORLD_SIZE``; MPI launchers (Open MPI, Intel MPI, MVAPICH2) set
their own variables, which accelerate also reads. The start-up checks need both before any process group exists:
only process 0 prints warnings and probes the output folder, and the epoch plan needs the process count.
"""
from __future__ import annotations

import os
import socket
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


def reserved_port() -> socket.socket:
    """A socket bound, not listening, to a free localhost TCP port: a ``--main_process_port`` (MASTER_PORT) for a
    launch of your own, held until its processes have started (or while they run). A port found free and let go at
    once goes back to the kernel's pool: a connection opened meanwhile (the ranks' own, another job's on the host)
    could take it, and rank 0 failed with "address already in use". Bound with SO_REUSEADDR it is given to no other
    socket, while torch's store, which binds with SO_REUSEADDR too, can still listen on it. (accelerate 1.7 and newer
    also take ``--main_process_port 0``; older ones hang on it.)

    >>> with reserved_port() as held:
    ...     1024 <= held.getsockname()[1] < 65536
    True
    """
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    return held
