"""Pretraining of the multimodal VideoMamba model (VTC, VTM, MLM, UTA) with accelerate.

Entry point: ``accelerate launch -m vmm.train --config configs/pretrain/<recipe>.yaml [key=value ...]``
(or ``python -m vmm.train`` for one process). Modules, top to bottom of a run: :mod:`.config` (typed
recipe), :mod:`.data` (annotation lists and tar shards, decoding, the seeded epoch plan), :mod:`.teacher`
(frozen CLIP and VideoMamba teachers), :mod:`.losses`, :mod:`.objective` (the module the optimizer trains),
:mod:`.optim`, :mod:`.launch` (rank and process count from the launcher), :mod:`.loop` and :mod:`.export`. Nothing
is imported here so ``import vmm`` stays light.
"""
