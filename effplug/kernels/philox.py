"""Counter-based randomness shared by the torch and Triton kernel paths.

Triton's ``tl.randint4x(seed, c)`` is Philox4x32-10 (Salmon et al., SC'11) with counter ``(c, 0, 0, 0)``
and key ``(seed & 0xffffffff, seed >> 32)``; it yields four 32-bit words. Element ``e`` of a kernel's
stream takes word ``e % 4`` of counter ``e // 4``, so every Philox evaluation feeds four elements.
``random_words`` reproduces that stream with int64 torch ops: a torch reference and a Triton kernel given
the same seed draw the same bits and can be compared bit for bit.
"""

from __future__ import annotations

import os
import random
import threading

import torch

_MASK32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
N_ROUNDS = 10
SEED_LIMIT = 2**63

# A private stream for seeds the caller did not give; the global torch/python RNGs are never touched.
_private_seeds = random.Random(int.from_bytes(os.urandom(8), "little"))


TORCH_DEFAULT_SEED = 67280421310721  # torch's CPU generator seed when nobody called manual_seed
_defaults_drawn = 0


def framework_seed() -> int | None:
    """The seed the user gave the framework (``pl.seed_everything``, HF ``set_seed``, ``torch.manual_seed``
    all set torch's initial seed), or None when none was set. Reading it advances no RNG stream."""
    seed = torch.initial_seed()
    return None if seed == TORCH_DEFAULT_SEED else seed


def resolve_seed(seed: int | None) -> int:
    """Return ``seed`` as a non-negative 63-bit int.

    ``None`` derives one from the framework's seed when one was set, so seeded runs repeat (the n-th default
    seed of a process is the same in every run), and draws a fresh one privately otherwise. The global torch
    and Python RNG streams are never advanced.
    """
    global _defaults_drawn
    if seed is None:
        base = framework_seed()
        if base is None:
            return _private_seeds.getrandbits(62)
        _defaults_drawn += 1
        return (base * 0x9E3779B97F4A7C15 + _defaults_drawn * 0xD1B54A32D192ED03) % SEED_LIMIT
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int or None; got {seed!r}")
    return seed % SEED_LIMIT


def _mulhilo_split(constant: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of ``constant * value`` for uint32 values held in int64, without overflow."""
    hi16 = value >> 16
    lo16 = value & 0xFFFF
    prod_hi = hi16 * constant  # < 2**48
    prod_lo = lo16 * constant  # < 2**48
    low = (prod_lo + ((prod_hi & 0xFFFF) << 16)) & _MASK32
    high = (prod_hi + (prod_lo >> 16)) >> 16
    return high & _MASK32, low


def _mulhilo_wrapping(constant: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same halves from one int64 product: it wraps modulo 2**64, which keeps all 64 bits of the result."""
    product = value * constant
    return (product >> 32) & _MASK32, product & _MASK32


def _wrapping_multiply_is_exact() -> bool:
    # int64 overflow is not documented by torch; check it on the extreme values once, else use the split form.
    probe = torch.tensor([0, 1, _MASK32, _MASK32 - 1, 2**31, 2**31 - 1, 0x89ABCDEF], dtype=torch.int64)
    return all(
        torch.equal(a, b)
        for c in (_ROUND_A, _ROUND_B)
        for a, b in zip(_mulhilo_wrapping(c, probe), _mulhilo_split(c, probe), strict=True)
    )


_mulhilo = _mulhilo_wrapping if _wrapping_multiply_is_exact() else _mulhilo_split  # 3x fewer int64 ops on CPU


def philox4x32(seed, counters: torch.Tensor, n_rounds: int = N_ROUNDS) -> tuple:
    """The four Philox4x32 output words for counters ``(c, 0, 0, 0)``, as uint32 values in int64 tensors.
    ``seed`` is an int, or an int64 tensor of one seed per counter (many streams in one pass).
    """
    c0 = counters.to(torch.int64) & _MASK32
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    if _mulhilo is _mulhilo_wrapping:
        return _philox_rounds_in_place(c0, k0, k1, n_rounds)
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(n_rounds):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _philox_rounds_in_place(c0, k0, k1, n_rounds):
    """The same rounds on six buffers that rotate, with no allocation per round (3-4x faster on CPU):
    ``c0' = hi(B*c2) ^ c1 ^ k0``, ``c1' = lo(B*c2)``, ``c2' = hi(A*c0) ^ c3 ^ k1``, ``c3' = lo(A*c0)``."""
    c1, c2, c3 = torch.zeros_like(c0), torch.zeros_like(c0), torch.zeros_like(c0)
    spare_a, spare_b = torch.empty_like(c0), torch.empty_like(c0)
    for _ in range(n_rounds):
        torch.mul(c2, _ROUND_B, out=spare_b)  # wraps modulo 2**64: all 64 bits of the product are kept
        torch.mul(c0, _ROUND_A, out=spare_a)
        # rename: the products become the new c0/c2, the old c1/c3 are xored in, the old c0/c2 take the lows
        old_c1, old_c3, c1, c3 = c1, c3, c0, c2
        c0, c2 = spare_b, spare_a
        torch.bitwise_and(c0, _MASK32, out=c1)
        torch.bitwise_and(c2, _MASK32, out=c3)
        c0.bitwise_right_shift_(32).bitwise_xor_(old_c1).bitwise_xor_(k0).bitwise_and_(_MASK32)
        c2.bitwise_right_shift_(32).bitwise_xor_(old_c3).bitwise_xor_(k1).bitwise_and_(_MASK32)
        spare_a, spare_b = old_c1, old_c3
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


_CHUNK = 1 << 16  # counters per pass: keeps the int64 temporaries (six 512 KB buffers) in cache


def _words_into(out: torch.Tensor, seed, counters: torch.Tensor) -> None:
    """Philox words ``[counters, 4]`` into ``out``: compiled on CPU once a process draws many, else eager."""
    compiled = _compiled_rounds() if out.device.type == "cpu" else None
    if compiled is None:
        torch.stack(philox4x32(seed, counters), dim=1, out=out)
        return
    for begin in range(0, counters.numel(), COMPILED_CHUNK):  # one shape: one compile per process
        part = counters[begin:begin + COMPILED_CHUNK]
        n = part.numel()
        keys = (seed[begin:begin + n] if isinstance(seed, torch.Tensor)
                else torch.tensor(seed, dtype=torch.int64).expand(n))
        if n < COMPILED_CHUNK:  # the last part: pad, then keep what was asked for
            pad = COMPILED_CHUNK - n
            part, keys = torch.nn.functional.pad(part, (0, pad)), torch.nn.functional.pad(keys, (0, pad))
        out[begin:begin + n] = compiled(keys, part)[:n]


def _rounds_functional(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """``philox4x32`` written for ``torch.compile`` (a key per counter, no in-place ops): ``[n, 4]`` words."""
    k0, k1, c0 = keys & _MASK32, (keys >> 32) & _MASK32, counters & _MASK32
    c1, c2, c3 = torch.zeros_like(c0), torch.zeros_like(c0), torch.zeros_like(c0)
    for _ in range(N_ROUNDS):
        product_b, product_a = c2 * _ROUND_B, c0 * _ROUND_A
        c0, c1, c2, c3 = (((product_b >> 32) & _MASK32) ^ c1 ^ k0, product_b & _MASK32,
                          ((product_a >> 32) & _MASK32) ^ c3 ^ k1, product_a & _MASK32)
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return torch.stack([c0, c1, c2, c3], dim=1)


# The compiled Philox (torch.compile, inductor's C++ on CPU): ~15x the eager int64 ops, for a one-time compile of
# a few seconds. "auto" compiles once the process has drawn COMPILE_AFTER_WORDS words, so short runs and tests
# never pay it; EFFPLUG_COMPILED_PHILOX=1 compiles at the first draw, =0 never. A compiled function that fails to
# build, or that differs from the eager rounds on a check chunk, is dropped with a WARNING.
COMPILED_CHUNK = 1 << 14  # 64K words: one part of the quantizer (pack.CHUNK_ELEMENTS)
COMPILE_AFTER_WORDS = 1 << 25
_compiled = None  # None: not tried yet; False: unavailable
_compile_lock = threading.Lock()
_drawn_words = 0


def _compiled_rounds():
    global _compiled
    mode = os.environ.get("EFFPLUG_COMPILED_PHILOX", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"EFFPLUG_COMPILED_PHILOX={mode!r} is not supported; use auto, 1 or 0")
    if mode == "0" or _compiled is False or _mulhilo is not _mulhilo_wrapping:
        return None
    if _compiled is None:
        if mode == "auto" and _drawn_words < COMPILE_AFTER_WORDS:
            return None
        with _compile_lock:
            if _compiled is None:
                _compiled = _build_compiled()
    return _compiled or None


def _build_compiled():
    import logging

    log = logging.getLogger("effplug.kernels")
    try:
        fn = torch.compile(_rounds_functional, dynamic=False, fullgraph=True)
        counters = torch.arange(COMPILED_CHUNK, dtype=torch.int64) * 977 + 12345
        keys = torch.full((COMPILED_CHUNK,), 0x0123456789ABCDEF, dtype=torch.int64)
        got = fn(keys, counters)
        if not torch.equal(got, torch.stack(philox4x32(0x0123456789ABCDEF, counters), dim=1)):
            log.warning("effplug.kernels: the compiled Philox differs from the eager rounds; using the eager ones")
            return False
        return fn
    except Exception as error:  # no C++ compiler, an inductor bug: the eager rounds give the same words
        log.warning("effplug.kernels: torch.compile of the Philox rounds failed (%s: %s); using the eager rounds",
                    type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")
        return False


def random_words(seed: int, n: int, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """Elements ``start..start+n-1`` of the stream: word ``e % 4`` of Philox counter ``e // 4`` (uint32 in
    int64). ``start`` is a multiple of 4, so a tensor can be drawn in parts that equal one whole draw."""
    global _drawn_words
    if start % 4:
        raise ValueError(f"start={start} must be a multiple of 4 (one Philox counter gives 4 words)")
    counters = -(-n // 4)
    _drawn_words += 4 * counters
    first = start // 4
    out = torch.empty(counters, 4, dtype=torch.int64, device=device)
    for begin in range(0, counters, _CHUNK):
        stop = min(counters, begin + _CHUNK)
        _words_into(out[begin:stop], seed, torch.arange(first + begin, first + stop, device=device))
    return out.view(-1)[:n]


def random_words_streams(seeds: list[int], lengths: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.cat([random_words(s, n) for s, n in zip(seeds, lengths)])``, computed in one Philox pass."""
    global _drawn_words
    counters = [-(-n // 4) for n in lengths]
    keys = torch.repeat_interleave(torch.tensor(seeds, dtype=torch.int64, device=device),
                                   torch.tensor(counters, device=device))
    _drawn_words += 4 * keys.numel()
    starts = torch.repeat_interleave(torch.tensor([0, *counters[:-1]], device=device).cumsum(0),
                                     torch.tensor(counters, device=device))
    local = torch.arange(keys.numel(), device=device) - starts
    words = torch.empty(keys.numel(), 4, dtype=torch.int64, device=device)
    for begin in range(0, keys.numel(), _CHUNK):  # in parts: the round buffers stay in cache
        stop = begin + _CHUNK
        _words_into(words[begin:stop], keys[begin:stop], local[begin:stop])
    words = words.view(-1)
    if all(n % 4 == 0 for n in lengths):
        return words
    keep = torch.cat([torch.arange(4 * c, device=device) < n for c, n in zip(counters, lengths, strict=True)])
    return words[keep]


def uniform24(seed: int, n: int, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """U[0,1) as float32 with 24 random bits: ``(r >> 8) * 2**-24``, exact in fp32 on every backend."""
    return (random_words(seed, n, device, start) >> 8).to(torch.float32) * (1.0 / 16777216.0)
