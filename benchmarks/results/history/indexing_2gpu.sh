#!/usr/bin/env bash
# Session 7: vmm index on 1 GPU and on 2 GPUs (torchrun, NCCL) over the same videos; same library?
set -uo pipefail
export PYTHONUNBUFFERED=1
MODEL=${MODEL:-videomamba_m16_25m}; N=${N:-48}; SECS=${SECS:-10}; BS=${BS:-32}; NPROC=${NPROC:-2}
if [ -f .device/site/site312.tar.xz ]; then mkdir -p /tmp/site && xz -d -T16 -c .device/site/site312.tar.xz | tar -C /tmp/site -xf - || exit 1; fi
export PYTHONPATH=/tmp/site:$PWD
hub=~/.cache/huggingface/hub/models--bert-base-uncased; mkdir -p $hub/snapshots/local $hub/refs
echo -n local > $hub/refs/main; cp .device/vocab/vocab.txt $hub/snapshots/local/
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
W=${W:-/tmp/s7idx}; rm -rf $W; mkdir -p $W
python3 -c "import vmm; vmm.create_model('$MODEL').save_pretrained('$W/model')" || exit 1
t=$(date +%s); python3 benchmarks/indexing.py --write-videos $W/videos --videos $N --video-seconds $SECS > /dev/null 2>&1 || exit 1
echo "wrote $N videos of $SECS s in $(( $(date +%s) - t )) s"
python3 -m vmm.cli index $W/videos --library $W/lib1 --model $W/model --batch-size $BS --quiet 2>&1 | grep -v Warn | tee $OUT/idx_1proc.log
torchrun --nproc_per_node $NPROC -m vmm.cli index $W/videos --library $W/lib2 --model $W/model --batch-size $BS --quiet 2>&1 | grep -v "Warn\|OMP_NUM_THREADS\|\*\*\*\*" | tee $OUT/idx_${NPROC}proc.log
echo "exit statuses: ${PIPESTATUS[0]}"
python3 benchmarks/results/history/compare_libraries.py $W/lib1 $W/lib2 | tee $OUT/idx_compare.log
# an incremental rerun under torchrun finds nothing to do
torchrun --nproc_per_node $NPROC -m vmm.cli index $W/videos --library $W/lib2 --model $W/model --quiet 2>&1 | grep -v "Warn\|OMP_NUM_THREADS\|\*\*\*\*" | tee -a $OUT/idx_${NPROC}proc.log
