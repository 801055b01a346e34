"""The CPU kernels' tuning constants, in one place, each with what it keeps true. Measurements behind the values:
docs/cpu-performance.md. None of them changes what a result means; where one changes its last bits, it says so.

Thread count: numba's (NUMBA_NUM_THREADS, the cores by default); the products split each matrix into that many
pieces of rows (kernels/cpu/linear.py), everything else splits into pieces of the fixed sizes below.
"""

PARALLEL_WORK = 1 << 14
"""Elements a kernel launch touches before its parallel version runs (below, the serial one: a hand-off to
OpenMP's threads costs a few microseconds). Chosen by size only, never by thread count. Changes speed; a kernel's
serial and parallel compilations may round differently in the last bit."""

PARALLEL_MACS = 1 << 17
"""Multiply-adds of a product kernel (linear, the @, attention) below which its serial version runs: handing a
small product to OpenMP's threads costs more than it saves (a few microseconds on a quiet machine; on a busy one a
parallel region waits for a descheduled thread, milliseconds). Measured on the generation of 500 tokens with the
key/value cache at the lecture's size (one row per product, 0.4-0.6M multiply-adds each, `window="shift"`, 2 threads,
quiet machine): 297 tokens/s at 2^20 (every product serial), 376 at 2^19, 406 at 2^18, 428 at 2^17, 423 at 2^16, 407
at 2^15. Training shapes are far above it. Chosen by size only; the serial and parallel versions split the work into
the same pieces, so the bits are the same."""

ROWS = 64
"""Rows per piece of a column sum (LayerNorm's dw and db, a linear layer's db, cross-entropy's mean loss): partial
sums per piece, added in piece order, so a result does not depend on the thread count. Changing it changes the last
bits of those sums."""

EMBED_COLS = 32
"""Channels per piece of the embedding's backward: each piece owns its columns of both tables (no atomics) and scans
every position once. Changes speed only."""

ADAMW_PIECE = 1 << 14
"""Elements per piece of the AdamW update and of the gradient norm's float64 partial sums (added in order). Changes
the norm's last bits only."""

QUERY_BLOCK = 64
QUERY_BLOCK_MIN = 32
SMALL_GEMM = 1_000_000
"""The attention's query blocks: at most QUERY_BLOCK queries, fewer (down to QUERY_BLOCK_MIN) while the block that
sees every key would have more than SMALL_GEMM multiply-adds per product, the size up to which OpenBLAS's unpacked
small-matrix kernels run (about 25% faster than its packed ones on these skinny products, measured on `lecture`).
Smaller blocks skip more of the masked keys; larger ones make larger, more efficient products. Changes the last bits
of dK and dV (their sum over blocks)."""
