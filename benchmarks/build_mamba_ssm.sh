#!/usr/bin/env bash
# Build mamba-ssm (selective_scan_cuda) and causal-conv1d (causal_conv1d_cuda) from their PyPI sdists for
# the local GPU architecture only, then install them. Used by benchmarks/encoder_speed.py's official-style
# baseline; our own kernels need neither.
#
#   benchmarks/build_mamba_ssm.sh SDIST_DIR [WHEEL_DIR]
#
# SDIST_DIR holds mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz, fetched on a machine with network with
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
#   CAUSAL_CONV1D_FORCE_BUILD=TRUE pip download --no-deps --no-build-isolation --no-binary :all: \
#       mamba-ssm causal-conv1d -d SDIST_DIR
# (the SKIP/FORCE variables only let pip read the metadata without a GPU).
# Wheels already in WHEEL_DIR (default SDIST_DIR/wheels) are installed instead of rebuilding.
# The upstream setup.py files compile 9 architectures and ignore TORCH_CUDA_ARCH_LIST, so the -gencode
# list is replaced by the local one (CUDA_ARCH, default: read from the GPU, e.g. 90). About 2.5 minutes on
# 16 cores for sm_90.
set -euo pipefail

# Checked before anything is built or created: a missing sdist was a page of ls and tar errors, a host without a
# GPU a Python traceback.
die() { echo "error: build_mamba_ssm.sh: $*" >&2; exit 2; }
[ -d "${1:?usage: build_mamba_ssm.sh SDIST_DIR [WHEEL_DIR]}" ] \
    || die "SDIST_DIR $1 is not a folder; fetch the sdists into it with the pip download line in this script's header"
SDIST_DIR=$(realpath "$1")
WHEEL_DIR=$(realpath -m "${2:-$SDIST_DIR/wheels}")
PY=${PYTHON:-python3}
$PY -c 'import torch' 2>/dev/null \
    || die "$PY cannot import torch; set PYTHON to the python of the environment to install into"
ARCH=${CUDA_ARCH:-$($PY -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}{n}")' 2>/dev/null)} \
    || die "$PY sees no CUDA GPU to build for; run it on the GPU host, or set CUDA_ARCH (e.g. 90 for sm_90)"
WORK=${BUILD_DIR:-/tmp/vmm_mamba_build}
JOBS=${MAX_JOBS:-$(nproc)}
found() { compgen -G "$WHEEL_DIR/$1-*.whl" >/dev/null || compgen -G "$SDIST_DIR/$1-*.tar.gz" >/dev/null; }
found mamba_ssm || die "no mamba_ssm-*.tar.gz in $SDIST_DIR nor a wheel in $WHEEL_DIR; fetch it with the pip \
download line in this script's header"
mkdir -p "$WORK" "$WHEEL_DIR"

build() {  # build NAME ENV_PREFIX jobs
    local name=$1 prefix=$2 jobs=$3
    if ls "$WHEEL_DIR"/${name}-*.whl >/dev/null 2>&1; then
        echo "[$name] using wheel in $WHEEL_DIR"
        return 0
    fi
    found "$name" || { echo "[$name] no $name-*.tar.gz in $SDIST_DIR" >&2; return 1; }
    local tarball
    tarball=$(ls "$SDIST_DIR"/${name}-*.tar.gz | head -n1)
    rm -rf "$WORK/$name" && mkdir -p "$WORK/$name"
    tar -xzf "$tarball" -C "$WORK/$name" --strip-components=1
    # Keep only this GPU's architecture: drop every "-gencode", "arch=..." pair and -lineinfo, add ours.
    $PY - "$WORK/$name/setup.py" "$ARCH" <<'EOF'
import re, sys
path, arch = sys.argv[1], sys.argv[2]
src = open(path).read()
src, n = re.subn(r'cc_flag\.append\("arch=compute_\d+,code=sm_\d+"\)', 'pass', src)
src = src.replace('cc_flag.append("-gencode")', 'pass')
src = src.replace('"-lineinfo",', '')
marker = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
assert n >= 3 and marker in src, "setup.py layout changed; update build_mamba_ssm.sh"
src = src.replace(marker, f'    cc_flag += ["-gencode", "arch=compute_{arch},code=sm_{arch}"]\n' + marker, 1)
open(path, "w").write(src)
EOF
    echo "[$name] building for sm_$ARCH with MAX_JOBS=$jobs"
    (cd "$WORK/$name" && env MAX_JOBS="$jobs" ${prefix}_FORCE_BUILD=TRUE \
        $PY -m pip wheel --no-build-isolation --no-deps --no-index -w "$WHEEL_DIR" . >"$WORK/$name.log" 2>&1) \
        || { tail -n 40 "$WORK/$name.log"; return 1; }
    echo "[$name] built: $(ls "$WHEEL_DIR"/${name}-*.whl)"
}

start=$(date +%s)
build causal_conv1d CAUSAL_CONV1D 4 &
conv_pid=$!
build mamba_ssm MAMBA "$JOBS"
conv_ok=0; wait "$conv_pid" || conv_ok=$?
$PY -m pip install -q --no-deps --no-index "$WHEEL_DIR"/mamba_ssm-*.whl
if [ "$conv_ok" = 0 ]; then
    $PY -m pip install -q --no-deps --no-index "$WHEEL_DIR"/causal_conv1d-*.whl
else
    echo "causal-conv1d failed to build; the baseline falls back to PyTorch's conv" >&2
fi
$PY -c 'import torch, selective_scan_cuda; print("selective_scan_cuda:", selective_scan_cuda.__file__)'
$PY -c 'import torch, causal_conv1d_cuda; print("causal_conv1d_cuda:", causal_conv1d_cuda.__file__)' || true
echo "build_mamba_ssm.sh done in $(( $(date +%s) - start )) s"
