# Sourced by the GPU scripts (gpu_validate.sh, gpu_decode.sh): the Python to use, this GPU's name and
# arch, a step banner, and the CUDA extension build for exactly this arch. Exits when no GPU is visible.
PY=${PYTHON:-python3}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')" || exit 1
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
arch=$($PY -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
# The extension's arch for this GPU: sm_90 builds as 90a (the mma.sync kernels, plus the Hopper forward
# that only 90a compiles: docs/hopper.md).
build_arch=$arch
if [ "$arch" = 90 ]; then build_arch=90a; fi
step() { echo "== $1 ($(date -u +%T))"; }

# build_cuda OUT_DIR: editable install with the extension for sm_$build_arch (no downloads), log in OUT_DIR/build.txt;
# a failed build is reported and the run goes on with Triton.
build_cuda() {
  step "build for sm_$build_arch"
  { time FLASHATTN_BUILD_CUDA=1 FLASHATTN_CUDA_ARCHS="$build_arch" $PY -m pip install --no-deps --no-build-isolation \
      --no-index -e . ; } > "$1/build.txt" 2>&1 || echo "CUDA build failed (see $1/build.txt); continuing with Triton"
  tail -3 "$1/build.txt"
}

# machine_header FILE COMMAND: what a committed result needs beside its numbers (the GPU and driver, torch
# and Triton, the date, the commit, the command that made it), written to FILE.
machine_header() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    date -u; git log -1 --format='commit %H' 2>/dev/null; echo "command: $2"; } > "$1" 2>&1
}
