/* kernel_avx512.c - the packed GEMM's micro-kernel for CPUs with AVX-512F.
 *
 * C[M x N] (row-major, N contiguous) in micro-tiles of DN_MR x DN_NR =
 * 8 x 32: 16 zmm accumulators, per k two loads of B and eight broadcasts of
 * A. A as panels [kc][8] (kernel) or 8 rows read in place (kernel_rows; rows
 * past mr repeat row 0 and are not stored); B as panels [kc][32]. The last K
 * block can end each tile with y = act(scale[r] * x + bias[r]) per row
 * (leaky, relu and linear in registers, the others after the store). */
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DN_NO_PACKED_GEMM) && !defined(DN_NO_AVX512)
#include <immintrin.h>

#define DN_AVX512 __attribute__((target("avx512f")))


#define ROW_FMA(i)                                                                                                    \
    do {                                                                                                              \
        const __m512 t = _mm512_set1_ps(ap[i]);                                                                       \
        c##i##0 = _mm512_fmadd_ps(t, b0, c##i##0);                                                                    \
        c##i##1 = _mm512_fmadd_ps(t, b1, c##i##1);                                                                    \
    } while (0)

DN_AVX512 static inline __m512 finish(__m512 v, int has_e, __m512 sc, __m512 bi, int act)
{
    if (!has_e) return v;
    v = _mm512_fmadd_ps(sc, v, bi);
    if (act == DN_ACT_LEAKY) return _mm512_max_ps(v, _mm512_mul_ps(v, _mm512_set1_ps(.1f)));
    if (act == DN_ACT_RELU) return _mm512_max_ps(v, _mm512_setzero_ps());
    return v;
}

#define ROW_STORE(i)                                                                                                  \
    do {                                                                                                              \
        if (i < mr) {                                                                                                 \
            float *cr = c + (size_t)(i) * ldc;                                                                        \
            __m512 v0 = c##i##0, v1 = c##i##1;                                                                        \
            if (accumulate) {                                                                                         \
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));                                                \
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));                                           \
            }                                                                                                         \
            __m512 sc = _mm512_setzero_ps(), bi = sc;                                                                 \
            if (has_e) {                                                                                              \
                sc = _mm512_set1_ps(e->scale ? e->scale[row0 + (i)] : 1.f);                                           \
                bi = _mm512_set1_ps(e->bias ? e->bias[row0 + (i)] : 0.f);                                             \
            }                                                                                                         \
            _mm512_mask_storeu_ps(cr, m0, finish(v0, has_e, sc, bi, act));                                            \
            _mm512_mask_storeu_ps(cr + 16, m1, finish(v1, has_e, sc, bi, act));                                       \
        }                                                                                                             \
    } while (0)

/* The micro-tile's 8 x nr values to C (masked past nr, rows past mr left
 * alone by ROW_STORE), then the epilogue for the activations ROW_STORE does
 * not fuse. */
#define STORE_TILE()                                                                                                  \
    do {                                                                                                              \
        const __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);                             \
        const __mmask16 m1 =                                                                                          \
            nr >= 32 ? (__mmask16)0xFFFF : (nr <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nr - 16)) - 1u));           \
        const int has_e = e != NULL;                                                                                  \
        const int act = e ? (int)e->act : DN_ACT_LINEAR;                                                             \
        ROW_STORE(0);                                                                                                 \
        ROW_STORE(1);                                                                                                 \
        ROW_STORE(2);                                                                                                 \
        ROW_STORE(3);                                                                                                 \
        ROW_STORE(4);                                                                                                 \
        ROW_STORE(5);                                                                                                 \
        ROW_STORE(6);                                                                                                 \
        ROW_STORE(7);                                                                                                 \
        if (has_e && act != DN_ACT_LINEAR && act != DN_ACT_LEAKY && act != DN_ACT_RELU)                              \
            dn_kernel_activate_rest(c, ldc, mr, nr, e);                                                                   \
    } while (0)

DN_AVX512 static void kernel_avx512(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr,
                                    int accumulate, const dn_epilogue *e, int row0)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    for (int k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
        ROW_FMA(0);
        ROW_FMA(1);
        ROW_FMA(2);
        ROW_FMA(3);
        ROW_FMA(4);
        ROW_FMA(5);
        ROW_FMA(6);
        ROW_FMA(7);
        ap += DN_MR;
        bp += DN_NR;
    }
    STORE_TILE();
}

#define ROW_FMA_DIRECT(i)                                                                                             \
    do {                                                                                                              \
        const __m512 t = _mm512_set1_ps(r##i[k]);                                                                     \
        c##i##0 = _mm512_fmadd_ps(t, b0, c##i##0);                                                                    \
        if (wide) c##i##1 = _mm512_fmadd_ps(t, b1, c##i##1);                                                          \
    } while (0)

/* The same with A read in place: row i of the micro-tile at a + i*lda (rows
 * past mr repeat row 0 and are not stored). With wide = 0 (a caller's last
 * panel of at most 16 columns) only the first 16 columns are computed: a
 * 13 x 13 layer's 169 columns are 5 whole panels and 9 columns, so that
 * panel costs half; the values computed are the same. */
DN_AVX512 static inline __attribute__((always_inline)) void
kernel_rows_body(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, int mr, int nr,
                 int accumulate, const dn_epilogue *e, int row0, const int wide)
{
    const float *r0 = a, *r1 = mr > 1 ? a + lda : a, *r2 = mr > 2 ? a + 2 * lda : a, *r3 = mr > 3 ? a + 3 * lda : a;
    const float *r4 = mr > 4 ? a + 4 * lda : a, *r5 = mr > 5 ? a + 5 * lda : a, *r6 = mr > 6 ? a + 6 * lda : a;
    const float *r7 = mr > 7 ? a + 7 * lda : a;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    for (int k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_load_ps(bp), b1 = wide ? _mm512_load_ps(bp + 16) : b0;
        ROW_FMA_DIRECT(0);
        ROW_FMA_DIRECT(1);
        ROW_FMA_DIRECT(2);
        ROW_FMA_DIRECT(3);
        ROW_FMA_DIRECT(4);
        ROW_FMA_DIRECT(5);
        ROW_FMA_DIRECT(6);
        ROW_FMA_DIRECT(7);
        bp += DN_NR;
    }
    STORE_TILE();
}

DN_AVX512 static void kernel_rows_avx512(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc,
                                         int mr, int nr, int accumulate, const dn_epilogue *e, int row0)
{
    if (nr > 16)
        kernel_rows_body(kc, a, lda, bp, c, ldc, mr, nr, accumulate, e, row0, 1);
    else
        kernel_rows_body(kc, a, lda, bp, c, ldc, mr, nr, accumulate, e, row0, 0);
}

/* The same with B's row k at b + boff[k] (32 floats, any alignment): a
 * stride-1 convolution reads its taps straight from a zero-framed copy of
 * the input (conv_tiled.c, direct), no panels packed. The same fused
 * multiply-adds in the same order as kernel_rows, so the same bits. */
DN_AVX512 static inline __attribute__((always_inline)) void
kernel_rows_at_body(int kc, const float *a, size_t lda, const float *b, const int *boff, float *c, size_t ldc, int mr,
                    int nr, int accumulate, const dn_epilogue *e, int row0, const int wide)
{
    const float *r0 = a, *r1 = mr > 1 ? a + lda : a, *r2 = mr > 2 ? a + 2 * lda : a, *r3 = mr > 3 ? a + 3 * lda : a;
    const float *r4 = mr > 4 ? a + 4 * lda : a, *r5 = mr > 5 ? a + 5 * lda : a, *r6 = mr > 6 ? a + 6 * lda : a;
    const float *r7 = mr > 7 ? a + 7 * lda : a;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    for (int k = 0; k < kc; ++k) {
        const float *bk = b + boff[k];
        const __m512 b0 = _mm512_loadu_ps(bk), b1 = wide ? _mm512_loadu_ps(bk + 16) : b0;
        ROW_FMA_DIRECT(0);
        ROW_FMA_DIRECT(1);
        ROW_FMA_DIRECT(2);
        ROW_FMA_DIRECT(3);
        ROW_FMA_DIRECT(4);
        ROW_FMA_DIRECT(5);
        ROW_FMA_DIRECT(6);
        ROW_FMA_DIRECT(7);
    }
    STORE_TILE();
}

DN_AVX512 static void kernel_rows_at_avx512(int kc, const float *a, size_t lda, const float *b, const int *boff,
                                            float *c, size_t ldc, int mr, int nr, int accumulate,
                                            const dn_epilogue *e, int row0)
{
    if (nr > 16)
        kernel_rows_at_body(kc, a, lda, b, boff, c, ldc, mr, nr, accumulate, e, row0, 1);
    else
        kernel_rows_at_body(kc, a, lda, b, boff, c, ldc, mr, nr, accumulate, e, row0, 0);
}

/* 16 x 16 transpose in registers: r[i] holds row i; afterwards r[i] holds column i */
DN_AVX512 static inline void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 4; ++i) {
            t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
            t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xDD);
        }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
    }
}

DN_AVX512 static void transpose16_avx512(const float *in, size_t ld_in, float *out, size_t ld_out)
{
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + (size_t)i * ld_in);
    transpose16(r);
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + (size_t)i * ld_out, r[i]);
}

DN_AVX512 static void transpose_panel_avx512(const float *rows, size_t ld, int n, float *bp)
{
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int h = 0; h < 2; ++h) {
            __m512 r[16];
            for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(rows + (size_t)(16 * h + i) * ld + j);
            transpose16(r);
            for (int i = 0; i < 16; ++i) _mm512_store_ps(bp + (size_t)(j + i) * DN_NR + 16 * h, r[i]);
        }
    for (; j < n; ++j)
        for (int i = 0; i < DN_NR; ++i) bp[(size_t)j * DN_NR + i] = rows[(size_t)i * ld + j];
}

/* Winograd from 48 tiles (26 x 26 outputs and up) since its transformed
 * filters are kept between passes: yolov4-tiny's 26 x 26 layers measured
 * 2-8 % faster with it, yolov4 at 416 7 % faster as a whole (341 -> 316 ms),
 * yolov7-tiny unchanged (in-process alternating runs, 2 threads); 13 x 13
 * (16 tiles) loses. While U was made again every pass the threshold was
 * 128 tiles. */
#define AVX512_WINOGRAD_MIN_TILES 48

const dn_cpu_kernels *dn_kernels_avx512(void)
{
    static const dn_cpu_kernels k = {"avx512", kernel_avx512, kernel_rows_avx512, transpose16_avx512,
                                     transpose_panel_avx512, dn_prefetch_tile_prfchw, AVX512_WINOGRAD_MIN_TILES,
                                     kernel_rows_at_avx512};
    return &k;
}

#else

const dn_cpu_kernels *dn_kernels_avx512(void) { return NULL; }

#endif
