"""Whether bf16 autocast pays on this machine.

On CPUs with native bf16 (AVX512-BF16 or AMX) bf16 autocast about halves the TinyViT encoder's
time. Elsewhere PyTorch emulates it and it is about 20 times slower: 53 s against 2.7 s to
encode one 512x512 image on a 2-core AVX2 EPYC, measured with `LiteBackend(bf16=...)._encode`.
So bf16 is on only where the CPU has the units.
"""

from __future__ import annotations

import torch


def fast_bf16(device: torch.device) -> bool:
    """True on a CPU with native bf16 units; False on others and on GPUs (which run fp32 weights here)."""
    if device.type != "cpu":
        return False
    # torch.cpu's feature probes are the only ones PyTorch offers; they are private but stable since 2.1
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
