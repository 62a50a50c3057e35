/* gemm_packed.c - the project's own single-precision GEMM kernel for
 * x86-64 CPUs with AVX-512 (chosen at run time; elsewhere the callers use
 * OpenBLAS or the portable loops).
 *
 * C[M x N] (row-major, N contiguous) is computed in micro-tiles of
 * DN_MR x DN_NR = 8 x 32: 16 zmm accumulators, per k two loads of B and
 * eight broadcasts of A. B is packed by the caller into panels [kc][32]
 * (columns beyond N zero), one block of kc <= DN_KC values of K at a time; A
 * either as panels [kc][8] (dn_kernel) or read in place, 8 rows of a
 * row-major matrix (dn_kernel_rows; rows past M repeat row 0 and are not
 * stored). Callers cut K at fixed multiples, and each block's products are
 * summed in k order into the accumulators and then added to C, so a value of
 * C never depends on how the caller cuts M and N into tasks (nor on the
 * thread count).
 *
 * The last K block can finish each micro-tile with a per-row epilogue
 * y = act(scale[r] * x + bias[r]) before the store (leaky, relu and linear
 * in vector registers; other activations elementwise after the store,
 * logistic vectorized).
 * That is how a convolution's batch norm, bias and activation cost no
 * extra pass over memory. */
#include "ops.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DN_NO_PACKED_GEMM)
#define DN_HAVE_AVX512_KERNEL 1
#include <immintrin.h>
#endif

int dn_packed_gemm_available(void)
{
#ifdef DN_HAVE_AVX512_KERNEL
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

/* ---- packing (plain C, any CPU) ---- */

void dn_pack_a(const float *a, int trans, int lda, int mr, int kc, float *ap)
{
    /* A[i][k] at a[i*lda + k] (trans = 0) or a[k*lda + i] (trans = 1), i < mr */
    if (!trans) {
        if (mr == DN_MR) {
            const float *r0 = a, *r1 = a + lda, *r2 = a + 2 * (size_t)lda, *r3 = a + 3 * (size_t)lda;
            const float *r4 = a + 4 * (size_t)lda, *r5 = a + 5 * (size_t)lda, *r6 = a + 6 * (size_t)lda,
                        *r7 = a + 7 * (size_t)lda;
            for (int k = 0; k < kc; ++k) {
                float *o = ap + (size_t)k * DN_MR;
                o[0] = r0[k];
                o[1] = r1[k];
                o[2] = r2[k];
                o[3] = r3[k];
                o[4] = r4[k];
                o[5] = r5[k];
                o[6] = r6[k];
                o[7] = r7[k];
            }
            return;
        }
        for (int i = 0; i < mr; ++i) {
            const float *row = a + (size_t)i * lda;
            for (int k = 0; k < kc; ++k) ap[(size_t)k * DN_MR + i] = row[k];
        }
    } else {
        for (int k = 0; k < kc; ++k) {
            const float *col = a + (size_t)k * lda;
            for (int i = 0; i < mr; ++i) ap[(size_t)k * DN_MR + i] = col[i];
        }
    }
    for (int i = mr; i < DN_MR; ++i)
        for (int k = 0; k < kc; ++k) ap[(size_t)k * DN_MR + i] = 0.f;
}

DN_VECTOR_CLONES
void dn_pack_b_row(const float *row, int n, int kc, int kk, float *bp)
{
    /* row: n values of one k (kk-th of the block) for consecutive columns;
     * panel p holds columns [32p, 32p + 32) at bp + (p*kc + kk)*32 */
    int p = 0;
    for (; (p + 1) * DN_NR <= n; ++p) {
        float *d = bp + ((size_t)p * kc + kk) * DN_NR;
        const float *s = row + (size_t)p * DN_NR;
        for (int i = 0; i < DN_NR; ++i) d[i] = s[i];
    }
    if (p * DN_NR < n) {
        float *d = bp + ((size_t)p * kc + kk) * DN_NR;
        const float *s = row + (size_t)p * DN_NR;
        const int rest = n - p * DN_NR;
        for (int i = 0; i < rest; ++i) d[i] = s[i];
        for (int i = rest; i < DN_NR; ++i) d[i] = 0.f;
    }
}

void dn_pack_b(const float *b, int trans, int ldb, int kc, int n, float *bp)
{
    /* B[k][j] at b[k*ldb + j] (trans = 0) or b[j*ldb + k] (trans = 1), j < n */
    if (!trans) {
        for (int k = 0; k < kc; ++k) dn_pack_b_row(b + (size_t)k * ldb, n, kc, k, bp);
        return;
    }
    const int panels = (n + DN_NR - 1) / DN_NR;
    for (int p = 0; p < panels; ++p) {
        float *dst = bp + (size_t)p * kc * DN_NR;
        const int j0 = p * DN_NR, nj = n - j0 < DN_NR ? n - j0 : DN_NR;
        for (int k = 0; k < kc; ++k) {
            float *d = dst + (size_t)k * DN_NR;
            for (int j = 0; j < nj; ++j) d[j] = b[(size_t)(j0 + j) * ldb + k];
            for (int j = nj; j < DN_NR; ++j) d[j] = 0.f;
        }
    }
}

/* ---- the micro-kernel ---- */

static void epilogue_rest(float *c, size_t ldc, int mr, int nr, int row0, const dn_epilogue *e)
{
    /* activations the kernel does not do in registers: after the affine store */
    for (int i = 0; i < mr; ++i) dn_affine_activate(c + (size_t)i * ldc, (size_t)nr, 1.f, 0.f, e->act);
    (void)row0;
}

#ifdef DN_HAVE_AVX512_KERNEL
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
            epilogue_rest(c, ldc, mr, nr, row0, e);                                                                   \
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

#endif

#ifdef DN_HAVE_AVX512_KERNEL
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
#endif

void dn_transpose16(const float *in, size_t ld_in, float *out, size_t ld_out)
{
#ifdef DN_HAVE_AVX512_KERNEL
    if (dn_packed_gemm_available()) {
        transpose16_avx512(in, ld_in, out, ld_out);
        return;
    }
#endif
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) out[(size_t)j * ld_out + i] = in[(size_t)i * ld_in + j];
}

void dn_transpose_panel(const float *rows, size_t ld, int n, float *bp)
{
#ifdef DN_HAVE_AVX512_KERNEL
    if (dn_packed_gemm_available()) {
        transpose_panel_avx512(rows, ld, n, bp);
        return;
    }
#endif
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < DN_NR; ++i) bp[(size_t)j * DN_NR + i] = rows[(size_t)i * ld + j];
}

#ifdef DN_HAVE_AVX512_KERNEL
/* every line a row of DN_NR floats can touch at any alignment: its first,
 * 64 bytes on (the middle of three), and its last */
__attribute__((target("prfchw"))) static void prefetch_tile_prfchw(const float *c, size_t ldc, int rows)
{
    for (int i = 0; i < rows; ++i) {
        const char *r = (const char *)(c + (size_t)i * ldc);
        __builtin_prefetch(r, 1, 3);
        __builtin_prefetch(r + 64, 1, 3);
        __builtin_prefetch(r + DN_NR * sizeof(float) - 4, 1, 3);
    }
}
#endif

void dn_prefetch_tile_for_write(const float *c, size_t ldc, int rows)
{
#ifdef DN_HAVE_AVX512_KERNEL
    /* reached only with the kernel: every AVX-512 CPU has PREFETCHW */
    prefetch_tile_prfchw(c, ldc, rows);
#else
    (void)c;
    (void)ldc;
    (void)rows;
#endif
}

void dn_kernel_rows(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, int mr, int nr,
                    int accumulate, const dn_epilogue *e, int row0)
{
#ifdef DN_HAVE_AVX512_KERNEL
    kernel_rows_avx512(kc, a, lda, bp, c, ldc, mr, nr, accumulate, e, row0);
#else
    float ap[DN_KC * DN_MR];
    dn_pack_a(a, 0, (int)lda, mr, kc, ap);
    dn_kernel(kc, ap, bp, c, ldc, mr, nr, accumulate, e, row0);
#endif
}

void dn_kernel(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr, int accumulate,
               const dn_epilogue *e, int row0)
{
#ifdef DN_HAVE_AVX512_KERNEL
    kernel_avx512(kc, ap, bp, c, ldc, mr, nr, accumulate, e, row0);
#else
    /* reference loops with the same summation order (only reached when a
     * caller skips dn_packed_gemm_available) */
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) {
            float s = 0.f;
            for (int k = 0; k < kc; ++k) s += ap[(size_t)k * DN_MR + i] * bp[(size_t)k * DN_NR + j];
            float *o = c + (size_t)i * ldc + j;
            float v = accumulate ? *o + s : s;
            if (e) {
                v = (e->scale ? e->scale[row0 + i] : 1.f) * v + (e->bias ? e->bias[row0 + i] : 0.f);
                dn_affine_activate(&v, 1, 1.f, 0.f, e->act);
            }
            *o = v;
        }
#endif
}

/* ---- a general GEMM on the kernel, split over the worker threads ----
 * C = op(A) * op(B) (+ C when accumulate), tasks over tiles of C: each packs
 * its own panels of B (per K block) into its worker's scratch and of A into
 * a small panel. */

typedef struct {
    const dn_net *net;
    const dn_layer *l;
    int ta, tb, M, N, K, lda, ldb, ldc, accumulate, mt, nt, n_tiles;
    const float *A, *B;
    float *C;
} packed_job;

size_t dn_packed_gemm_scratch(int nt)
{
    /* B block [DN_KC][nt rounded up to panels] + one A panel [DN_KC][DN_MR] */
    const size_t cols = (size_t)(nt + DN_NR - 1) / DN_NR * DN_NR;
    return ((size_t)DN_KC * cols + (size_t)DN_KC * DN_MR) * sizeof(float) + 64;
}

static void packed_task(void *ctx, int task, int worker)
{
    const packed_job *j = ctx;
    const int m0 = task / j->n_tiles * j->mt, n0 = task % j->n_tiles * j->nt;
    const int m = j->M - m0 < j->mt ? j->M - m0 : j->mt, n = j->N - n0 < j->nt ? j->N - n0 : j->nt;
    float *bp = dn_scratch(j->net, j->l, worker);
    const size_t cols = (size_t)(n + DN_NR - 1) / DN_NR * DN_NR;
    float *ap = bp + (size_t)DN_KC * cols;
    for (int k0 = 0; k0 < j->K; k0 += DN_KC) {
        const int kc = j->K - k0 < DN_KC ? j->K - k0 : DN_KC;
        const float *b = j->tb ? j->B + (size_t)n0 * j->ldb + k0 : j->B + (size_t)k0 * j->ldb + n0;
        dn_pack_b(b, j->tb, j->ldb, kc, n, bp);
        const int acc = k0 > 0 || j->accumulate;
        for (int i0 = 0; i0 < m; i0 += DN_MR) {
            const int mr = m - i0 < DN_MR ? m - i0 : DN_MR;
            const float *a = j->ta ? j->A + (size_t)k0 * j->lda + (m0 + i0) : j->A + (size_t)(m0 + i0) * j->lda + k0;
            dn_pack_a(a, j->ta, j->lda, mr, kc, ap);
            for (int p = 0; p * DN_NR < n; ++p) {
                const int nr = n - p * DN_NR < DN_NR ? n - p * DN_NR : DN_NR;
                dn_kernel(kc, ap, bp + (size_t)p * kc * DN_NR, j->C + (size_t)(m0 + i0) * j->ldc + n0 + p * DN_NR,
                          (size_t)j->ldc, mr, nr, acc, NULL, 0);
            }
        }
    }
}

void dn_packed_gemm_plan(int M, int N, int *mt, int *nt)
{
    /* tiles of at most 256 columns and 128 rows: a B block of 256 KiB, enough tiles to share */
    *nt = N <= 256 ? N : 256;
    *mt = M <= 128 ? M : 128;
}

void dn_packed_gemm(const dn_net *net, const dn_layer *l, int ta, int tb, int M, int N, int K, const float *A, int lda,
                    const float *B, int ldb, int accumulate, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    packed_job j = {net, l, ta, tb, M, N, K, lda, ldb, ldc, accumulate, 0, 0, 0, A, B, C};
    dn_packed_gemm_plan(M, N, &j.mt, &j.nt);
    j.n_tiles = (N + j.nt - 1) / j.nt;
    dn_parallel(net, (M + j.mt - 1) / j.mt * j.n_tiles, packed_task, &j);
}
