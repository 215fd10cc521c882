r"""Reproduce VideoMamba-M's zero-shot DiDeMo paragraph-to-video retrieval row (first 30 s of each video).

Prints the ITC (emb), ITM re-ranked (rerank) and FAISS (index) rows beside the published numbers::

    python benchmarks/retrieval_didemo.py --annotations anno_downstream/didemo_ret_test.json \
        --videos DiDeMo/videos [--checkpoint hf-hub:OpenGVLab/VideoMamba/videomamba_m16_25M_f8_res224.pth]

Several GPUs: ``accelerate launch --multi_gpu --num_processes 8 benchmarks/retrieval_didemo.py ...``.
docs/evaluation.md says where to get the annotation file and the videos.
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    try:  # a Ctrl-C while torch is imported is one line too, as in vmm eval
        from retrieval.evaluate import benchmark_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(benchmark_main("didemo"))
