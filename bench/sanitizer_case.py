"""A small forward + backward through each GPU backend, for compute-sanitizer (memcheck, racecheck):
ragged sizes (tiles end mid-block), GQA, causal and RoPE, so masked tails and the encoding run."""
import sys

import torch

import flashattn_py as fa


def main(backends) -> int:
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape_q, shape_kv = (2, 77, 4, 64), (2, 93, 2, 64)
    q, k, v = (torch.randn(s, generator=gen).cuda().half().requires_grad_() for s in (shape_q, shape_kv, shape_kv))
    for backend in backends:
        for options in (dict(causal=True), dict(rotary=fa.Rotary(), window_size=(16, 8))):
            out = fa.attention(q, k, v, backend=backend, **options)
            torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
            torch.cuda.synchronize()
            print(f"{backend} {options}: ran fwd + bwd")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["cuda"]))
