/* kernel_avx2.c - the packed GEMM's micro-kernel for x86-64 CPUs with AVX2
 * and FMA (Haswell and later, every AMD Zen).
 *
 * The tile and the panels are those of the AVX-512 kernel (DN_MR x DN_NR =
 * 8 x 32, B panels [kc][32], A panels [kc][8] or rows in place), but 16 ymm
 * registers cannot hold 8 x 32 accumulators. The tile is computed in blocks
 * that each keep their accumulators, B vectors and one broadcast in
 * registers:
 *   rows 0..5 x columns 0..15 and rows 0..5 x columns 16..31: 12 accumulators,
 *   2 B vectors, 1 broadcast (15 registers; 12 independent FMA chains);
 *   rows 6..7 x columns 0..31: 8 accumulators, 4 B vectors, 1 broadcast.
 * Blocks are cut to the tile's real rows and columns (an edge tile of 3 rows
 * and 9 columns runs one block of 3 x 16), so no padding is computed beyond
 * the last vector of 8 columns. Each value of C is the same chain of fused
 * multiply-adds in k order as in the AVX-512 kernel, so both give the same
 * bits. */
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DN_NO_PACKED_GEMM)
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>

#define DN_AVX2 __attribute__((target("avx2,fma")))
#define DN_INLINE static inline __attribute__((always_inline))

/* masks for the first n lanes: loadu(lane_mask + 8 - n), 1 <= n <= 8 */
static const int32_t lane_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

DN_AVX2 DN_INLINE __m256 finish(__m256 v, int has_e, __m256 sc, __m256 bi, int act)
{
    if (!has_e) return v;
    v = _mm256_fmadd_ps(sc, v, bi);
    if (act == DN_ACT_LEAKY) return _mm256_max_ps(v, _mm256_mul_ps(v, _mm256_set1_ps(.1f)));
    if (act == DN_ACT_RELU) return _mm256_max_ps(v, _mm256_setzero_ps());
    return v;
}

/* One block: R rows of A (row i, value k at a + i*rs + k*KS) times W vectors
 * of B's panel from column col (bp already at that column), stored to c (the
 * block's first value) for the columns below nr_left (counted from col).
 * With boff (the direct convolution), B's row k is at bp + boff[k] instead,
 * unaligned. */
DN_AVX2 DN_INLINE void block(const int R, const int W, const int KS, int kc, const float *a, size_t rs,
                             const float *bp, const int *boff, float *c, size_t ldc, int nr_left, int accumulate,
                             const dn_epilogue *e, int row)
{
    __m256 acc[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
        for (int w = 0; w < W; ++w) acc[i][w] = _mm256_setzero_ps();
    for (int k = 0; k < kc; ++k) {
        __m256 b[4];
#pragma GCC unroll 4
        for (int w = 0; w < W; ++w) {
            b[w] = boff ? _mm256_loadu_ps(bp + boff[k] + 8 * w) : _mm256_load_ps(bp + 8 * w);
            __asm__("" : "+x"(b[w])); /* one load per vector, kept in a register (not one per use) */
        }
#pragma GCC unroll 6
        for (int i = 0; i < R; ++i) {
            const __m256 t = _mm256_broadcast_ss(a + (size_t)i * rs + (size_t)k * KS);
#pragma GCC unroll 4
            for (int w = 0; w < W; ++w) acc[i][w] = _mm256_fmadd_ps(t, b[w], acc[i][w]);
        }
        if (!boff) bp += DN_NR;
    }
    const int has_e = e != NULL;
    const int act = e ? (int)e->act : DN_ACT_LINEAR;
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
        float *cr = c + (size_t)i * ldc;
        __m256 sc = _mm256_setzero_ps(), bi = sc;
        if (has_e) {
            sc = _mm256_set1_ps(e->scale ? e->scale[row + i] : 1.f);
            bi = _mm256_set1_ps(e->bias ? e->bias[row + i] : 0.f);
        }
#pragma GCC unroll 4
        for (int w = 0; w < W; ++w) {
            const int n = nr_left - 8 * w;
            __m256 v = acc[i][w];
            if (n >= 8) {
                if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(cr + 8 * w));
                _mm256_storeu_ps(cr + 8 * w, finish(v, has_e, sc, bi, act));
            } else {
                const __m256i m = _mm256_loadu_si256((const __m256i *)(lane_mask + 8 - n));
                if (accumulate) v = _mm256_add_ps(v, _mm256_maskload_ps(cr + 8 * w, m));
                _mm256_maskstore_ps(cr + 8 * w, m, finish(v, has_e, sc, bi, act));
            }
        }
    }
}

#define BLOCK_CASE(R, W)                                                                                              \
    case (R) * 8 + (W):                                                                                               \
        block(R, W, KS, kc, a, rs, bp, boff, c, ldc, nr_left, accumulate, e, row);                                     \
        return

/* one block of r rows and w vectors of 8 columns, the shapes the tile uses:
 * rows 0..5 (r 1..6) x w 1..2, rows 6..7 (r 1..2) x w 1..4 */
DN_AVX2 DN_INLINE void block_of(const int KS, int r, int w, int kc, const float *a, size_t rs, const float *bp,
                                const int *boff, float *c, size_t ldc, int nr_left, int accumulate,
                                const dn_epilogue *e, int row)
{
    switch (r * 8 + w) {
        BLOCK_CASE(1, 1);
        BLOCK_CASE(1, 2);
        BLOCK_CASE(1, 3);
        BLOCK_CASE(1, 4);
        BLOCK_CASE(2, 1);
        BLOCK_CASE(2, 2);
        BLOCK_CASE(2, 3);
        BLOCK_CASE(2, 4);
        BLOCK_CASE(3, 1);
        BLOCK_CASE(3, 2);
        BLOCK_CASE(4, 1);
        BLOCK_CASE(4, 2);
        BLOCK_CASE(5, 1);
        BLOCK_CASE(5, 2);
        BLOCK_CASE(6, 1);
        BLOCK_CASE(6, 2);
    }
}

/* The tile: A's row i, value k at a + i*rs + k*KS. */
DN_AVX2 DN_INLINE void tile(const int KS, int kc, const float *a, size_t rs, const float *bp, const int *boff,
                            float *c, size_t ldc, int mr, int nr, int accumulate, const dn_epilogue *e, int row0)
{
    const int r6 = mr < 6 ? mr : 6;
    for (int h = 0; 16 * h < nr; ++h) {
        const int left = nr - 16 * h;
        block_of(KS, r6, left > 8 ? 2 : 1, kc, a, rs, bp + 16 * h, boff, c + 16 * h, ldc, left, accumulate, e, row0);
    }
    if (mr > 6)
        block_of(KS, mr - 6, (nr + 7) / 8, kc, a + 6 * rs, rs, bp, boff, c + 6 * ldc, ldc, nr, accumulate, e,
                 row0 + 6);
    if (e && e->act != DN_ACT_LINEAR && e->act != DN_ACT_LEAKY && e->act != DN_ACT_RELU)
        dn_kernel_activate_rest(c, ldc, mr, nr, e);
}

DN_AVX2 static void kernel_avx2(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr,
                                int accumulate, const dn_epilogue *e, int row0)
{
    tile(DN_MR, kc, ap, 1, bp, NULL, c, ldc, mr, nr, accumulate, e, row0);
}

DN_AVX2 static void kernel_rows_avx2(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, int mr,
                                     int nr, int accumulate, const dn_epilogue *e, int row0)
{
    tile(1, kc, a, lda, bp, NULL, c, ldc, mr, nr, accumulate, e, row0);
}

/* B's row k at b + boff[k] (the direct convolution): the same blocks, the same bits */
DN_AVX2 static void kernel_rows_at_avx2(int kc, const float *a, size_t lda, const float *b, const int *boff, float *c,
                                        size_t ldc, int mr, int nr, int accumulate, const dn_epilogue *e, int row0)
{
    tile(1, kc, a, lda, b, boff, c, ldc, mr, nr, accumulate, e, row0);
}

/* 8 x 8 transpose in registers: r[i] holds row i; afterwards column i */
DN_AVX2 DN_INLINE void transpose8(__m256 r[8])
{
    __m256 t[8], s[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {
        s[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x31);
    }
}

DN_AVX2 static void transpose16_avx2(const float *in, size_t ld_in, float *out, size_t ld_out)
{
    for (int bi = 0; bi < 16; bi += 8)
        for (int bj = 0; bj < 16; bj += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + (size_t)(bi + i) * ld_in + bj);
            transpose8(r);
            for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + (size_t)(bj + i) * ld_out + bi, r[i]);
        }
}

DN_AVX2 static void transpose_panel_avx2(const float *rows, size_t ld, int n, float *bp)
{
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int h = 0; h < DN_NR / 8; ++h) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows + (size_t)(8 * h + i) * ld + j);
            transpose8(r);
            for (int i = 0; i < 8; ++i) _mm256_store_ps(bp + (size_t)(j + i) * DN_NR + 8 * h, r[i]);
        }
    for (; j < n; ++j)
        for (int i = 0; i < DN_NR; ++i) bp[(size_t)j * DN_NR + i] = rows[(size_t)i * ld + j];
}

/* without PREFETCHW (some AVX2 CPUs before Broadwell): a plain prefetch of the same lines */
static void prefetch_tile_read(const float *c, size_t ldc, int rows)
{
    for (int i = 0; i < rows; ++i) {
        const char *r = (const char *)(c + (size_t)i * ldc);
        __builtin_prefetch(r, 0, 3);
        __builtin_prefetch(r + 64, 0, 3);
        __builtin_prefetch(r + DN_NR * sizeof(float) - 4, 0, 3);
    }
}

/* Winograd from 48 tiles (26 x 26 outputs and up): yolov4-tiny's 26 x 26
 * layers (49 tiles, 128-384 channels) measured 10-25 % faster with it
 * (in-process alternating runs, 2 threads); its 13 x 13 layers (16 tiles)
 * 4-20 % slower. */
#define AVX2_WINOGRAD_MIN_TILES 48

const dn_cpu_kernels *dn_kernels_avx2(void)
{
    static const dn_cpu_kernels with_w = {"avx2", kernel_avx2, kernel_rows_avx2, transpose16_avx2,
                                          transpose_panel_avx2, dn_prefetch_tile_prfchw, AVX2_WINOGRAD_MIN_TILES,
                                          kernel_rows_at_avx2};
    static const dn_cpu_kernels without_w = {"avx2", kernel_avx2, kernel_rows_avx2, transpose16_avx2,
                                             transpose_panel_avx2, prefetch_tile_read, AVX2_WINOGRAD_MIN_TILES,
                                             kernel_rows_at_avx2};
    unsigned a, b, c, d;
    /* PRFCHW: CPUID 0x80000001, ECX bit 8 */
    const int prfchw = __get_cpuid(0x80000001u, &a, &b, &c, &d) && (c & (1u << 8));
    return prfchw ? &with_w : &without_w;
}

#else

const dn_cpu_kernels *dn_kernels_avx2(void) { return NULL; }

#endif
