# Does Triton warp-specialize a plain matmul loop for sm_90 (no GPU needed)? Run with TRITON_INTERPRET unset:
#   env -u TRITON_INTERPRET python bench/results/static-2026-12-07/warp_specialize_probe.py
import triton, triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget

@triton.jit
def k(a_ptr, b_ptr, c_ptr, K, WS: tl.constexpr):
    offs = tl.arange(0, 64)
    acc = tl.zeros([64, 64], tl.float32)
    for kk in tl.range(0, K, 64, warp_specialize=WS):
        a = tl.load(a_ptr + offs[:, None] * K + kk + offs[None, :])
        b = tl.load(b_ptr + (kk + offs[:, None]) * 64 + offs[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + offs[:, None] * 64 + offs[None, :], acc)

for ws in (False, True):
    src = ASTSource(fn=k, signature={"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", "K": "i32", "WS": "constexpr"}, constexprs={"WS": ws})
    try:
        c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ptx = c.asm["ptx"]
        print(ws, "ok", "wgmma" in ptx, ptx.count("setmaxnreg"), c.metadata.num_warps if hasattr(c.metadata, "num_warps") else "")
    except Exception as e:
        print(ws, "FAIL", str(e)[:300])
