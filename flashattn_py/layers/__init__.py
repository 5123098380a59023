"""Layers under FlashAttention's module names (flash_attn.layers.*), so `from flash_attn.layers.rotary
import apply_rotary_emb` becomes `from flashattn_py.layers.rotary import apply_rotary_emb`."""
