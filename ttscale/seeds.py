"""Per-sample seeds derived from a base seed.

``derive_seed(base, i)`` is a bijection of ``i`` on 31-bit integers for a fixed base: samples
0 .. 2**31-1 of one draw always get distinct seeds, so no two samples are the same seeded request
counted as independent. The mixing step makes neighbouring bases and indices give unrelated seeds.
"""

from __future__ import annotations

import secrets

__all__ = ["SEED_BITS", "derive_seed", "random_base_seed"]

SEED_BITS = 31  # servers differ in seed width; 31 bits fits every signed 32-bit field
_MASK = (1 << SEED_BITS) - 1


def _mix(value: int) -> int:
    # xorshift and multiplication by an odd constant are each invertible modulo 2**31.
    value ^= value >> 16
    value = (value * 0x45D9F3B) & _MASK
    value ^= value >> 15
    value = (value * 0x2C1B3C6D + 1) & _MASK  # odd multiplier: still a bijection
    value ^= value >> 16
    return value


def derive_seed(base: int, index: int) -> int:
    """The seed of sample ``index`` in a draw whose base seed is ``base``."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    offset = _mix(base & _MASK)
    return _mix((offset + index) & _MASK)


def random_base_seed() -> int:
    return secrets.randbits(SEED_BITS)
