"""Procedural video-text corpus: small encoded clips of moving shapes with true captions.

It lets vmm train, index, search and evaluate on a machine with no network:
every clip is drawn from a structured description (a :class:`VideoSpec`), and
the captions are written from that same description, so they are correct by
construction. The corpus follows the official annotation format
(``{"video", "caption"}`` lists) and adds an order-sensitive test subset whose
pairs are exact time reversals of each other: a model that ignores frame order
sees the same set of frames for both members and cannot tell them apart.

Modules: ``scene`` (the vocabulary of shapes and colours, the spec dataclasses,
rendering with :func:`render_frames`, time reversal with :func:`reverse_spec`,
random specs with :func:`sample_spec`), ``captions`` (:func:`describe`), ``video``
(:func:`write_video`), and ``corpus`` (:func:`generate_corpus`, :func:`read_specs`
and the command line, ``python -m vmm.data.synthetic``). The names below are the
documented building blocks (docs/synthetic.md).

>>> import tempfile
>>> info = generate_corpus(tempfile.mkdtemp(), num_videos=6, seed=1, workers=1)
>>> info.split_sizes
{'train': 4, 'val': 1, 'test': 1}
"""
from vmm.data.synthetic.captions import describe
from vmm.data.synthetic.corpus import CorpusInfo, generate_corpus, read_specs
from vmm.data.synthetic.scene import (VideoSpec, object_state, render_background, render_frames, reverse_spec,
                                      sample_spec)
from vmm.data.synthetic.video import write_video

__all__ = ["CorpusInfo", "VideoSpec", "describe", "generate_corpus", "object_state", "read_specs", "render_background",
           "render_frames", "reverse_spec", "sample_spec", "write_video"]
