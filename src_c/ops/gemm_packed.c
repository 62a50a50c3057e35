/* gemm_packed.c - the project's own single-precision GEMM on a packed
 * micro-kernel: the packing, the choice of kernel, and a general GEMM split
 * over the worker threads.
 *
 * C[M x N] (row-major, N contiguous) is computed in micro-tiles of
 * DN_MR x DN_NR = 8 x 32. B is packed by the caller into panels [kc][32]
 * (columns beyond N zero), one block of kc <= DN_KC values of K at a time; A
 * either as panels [kc][8] (dn_kernel) or read in place, 8 rows of a
 * row-major matrix (dn_kernel_rows; rows past M are not stored). Callers cut
 * K at fixed multiples, and each block's products are summed in k order into
 * the accumulators and then added to C, so a value of C never depends on how
 * the caller cuts M and N into tasks (nor on the thread count).
 *
 * The last K block can finish each micro-tile with a per-row epilogue
 * y = act(scale[r] * x + bias[r]) before the store (leaky, relu and linear
 * in vector registers; other activations elementwise after the store,
 * logistic vectorized). That is how a convolution's batch norm, bias and
 * activation cost no extra pass over memory.
 *
 * The kernels (kernels.h): AVX-512 (kernel_avx512.c) and AVX2 + FMA
 * (kernel_avx2.c), the best one the CPU runs picked when first needed; the
 * environment variable PYDARKNET_CPU_KERNEL or dn_set_cpu_kernel choose a
 * lower one (to measure it). They give the same bits for the same GEMM
 * (the Winograd threshold is theirs too: kernels.h). Without any, callers
 * use OpenBLAS (dn_packed_gemm_available is 0). */
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- which kernel ---- */

static const char *const KERNEL_NAMES[] = {"avx512", "avx2", "none"}; /* best first */

static int known(const char *name)
{
    for (size_t i = 0; i < sizeof KERNEL_NAMES / sizeof *KERNEL_NAMES; ++i)
        if (!strcmp(name, KERNEL_NAMES[i])) return 1;
    return 0;
}

static const dn_cpu_kernels *kernel_of(const char *name)
{
    if (!strcmp(name, "avx512")) return dn_kernels_avx512();
    if (!strcmp(name, "avx2")) return dn_kernels_avx2();
    return NULL;
}

static int cpu_runs(const char *name)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!strcmp(name, "avx512")) return __builtin_cpu_supports("avx512f") && dn_kernels_avx512() != NULL;
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && dn_kernels_avx2() != NULL;
#endif
    return !strcmp(name, "none");
}

/* why a known kernel cannot run here */
static const char *missing(const char *name)
{
    return kernel_of(name) ? "this CPU does not run it" : "this build leaves it out";
}

static const dn_cpu_kernels *active;
static pthread_once_t chosen = PTHREAD_ONCE_INIT;

static void choose(void)
{
    const char *best = "none";
    for (size_t i = 0; i < sizeof KERNEL_NAMES / sizeof *KERNEL_NAMES; ++i)
        if (cpu_runs(KERNEL_NAMES[i])) {
            best = KERNEL_NAMES[i];
            break;
        }
    const char *want = getenv("PYDARKNET_CPU_KERNEL");
    if (want && *want) {
        if (cpu_runs(want))
            best = want;
        else
            fprintf(stderr, "pydarknet: PYDARKNET_CPU_KERNEL=%s: %s; using %s\n", want,
                    known(want) ? missing(want) : "unknown kernel (avx512, avx2 or none)",
                    best);
    }
    __atomic_store_n(&active, kernel_of(best), __ATOMIC_RELEASE);
}

static const dn_cpu_kernels *kernels(void)
{
    pthread_once(&chosen, choose);
    return __atomic_load_n(&active, __ATOMIC_ACQUIRE);
}

const char *dn_cpu_kernel(void)
{
    const dn_cpu_kernels *k = kernels();
    return k ? k->name : "none";
}

int dn_cpu_kernel_available(const char *name) { return name && cpu_runs(name); }

dn_status dn_set_cpu_kernel(const char *name)
{
    if (!name) return dn_fail(DN_ERR_ARG, "CPU kernel name is NULL");
    if (!known(name))
        return dn_fail(DN_ERR_ARG, "unknown CPU kernel '%s' (avx512, avx2 or none)", name);
    if (!cpu_runs(name)) return dn_fail(DN_ERR_ARG, "the %s kernel: %s", name, missing(name));
    pthread_once(&chosen, choose);
    __atomic_store_n(&active, kernel_of(name), __ATOMIC_RELEASE);
    return DN_OK;
}

int dn_packed_gemm_available(void) { return kernels() != NULL; }

int dn_packed_winograd_min_tiles(void)
{
    const dn_cpu_kernels *k = kernels();
    return k ? k->winograd_min_tiles : 0;
}

/* ---- the cache the tiles are sized for ---- */

static size_t l2_bytes;
static pthread_once_t l2_read = PTHREAD_ONCE_INIT;

static void read_l2(void)
{
    long v = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    l2_bytes = v > 0 ? (size_t)v : (size_t)2 << 20;
    const char *e = getenv("PYDARKNET_CPU_L2");
    if (e && *e) {
        char *end;
        const double n = strtod(e, &end);
        const double unit = (*end == 'K' || *end == 'k') ? 1024. : (*end == 'M' || *end == 'm') ? 1048576. : 1.;
        if (unit > 1.) ++end;
        if (n >= 1 && n * unit <= (double)(1u << 30) && !*end)
            l2_bytes = (size_t)(n * unit);
        else
            fprintf(stderr, "pydarknet: PYDARKNET_CPU_L2=%s: not a size (bytes, or with K or M); using %zu\n", e,
                    l2_bytes);
    }
}

size_t dn_cpu_l2_bytes(void)
{
    pthread_once(&l2_read, read_l2);
    return l2_bytes;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* every line a row of DN_NR floats can touch at any alignment: its first,
 * 64 bytes on (the middle of three), and its last */
__attribute__((target("prfchw"))) void dn_prefetch_tile_prfchw(const float *c, size_t ldc, int rows)
{
    for (int i = 0; i < rows; ++i) {
        const char *r = (const char *)(c + (size_t)i * ldc);
        __builtin_prefetch(r, 1, 3);
        __builtin_prefetch(r + 64, 1, 3);
        __builtin_prefetch(r + DN_NR * sizeof(float) - 4, 1, 3);
    }
}
#endif

void dn_kernel_activate_rest(float *c, size_t ldc, int mr, int nr, const dn_epilogue *e)
{
    for (int i = 0; i < mr; ++i) dn_affine_activate(c + (size_t)i * ldc, (size_t)nr, 1.f, 0.f, e->act);
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

/* ---- the kernel in use ---- */

void dn_transpose16(const float *in, size_t ld_in, float *out, size_t ld_out)
{
    const dn_cpu_kernels *k = kernels();
    if (k) {
        k->transpose16(in, ld_in, out, ld_out);
        return;
    }
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) out[(size_t)j * ld_out + i] = in[(size_t)i * ld_in + j];
}

void dn_transpose_panel(const float *rows, size_t ld, int n, float *bp)
{
    const dn_cpu_kernels *k = kernels();
    if (k) {
        k->transpose_panel(rows, ld, n, bp);
        return;
    }
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < DN_NR; ++i) bp[(size_t)j * DN_NR + i] = rows[(size_t)i * ld + j];
}

void dn_prefetch_tile_for_write(const float *c, size_t ldc, int rows)
{
    const dn_cpu_kernels *k = kernels();
    if (k) k->prefetch_tile(c, ldc, rows);
}

void dn_kernel_rows(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, int mr, int nr,
                    int accumulate, const dn_epilogue *e, int row0)
{
    const dn_cpu_kernels *k = kernels();
    if (k) {
        k->kernel_rows(kc, a, lda, bp, c, ldc, mr, nr, accumulate, e, row0);
        return;
    }
    float ap[DN_KC * DN_MR];
    dn_pack_a(a, 0, (int)lda, mr, kc, ap);
    dn_kernel(kc, ap, bp, c, ldc, mr, nr, accumulate, e, row0);
}

int dn_kernel_rows_at_available(void)
{
    const dn_cpu_kernels *k = kernels();
    return k && k->kernel_rows_at;
}

void dn_kernel_rows_at(int kc, const float *a, size_t lda, const float *b, const int *boff, float *c, size_t ldc,
                       int mr, int nr, int accumulate, const dn_epilogue *e, int row0)
{
    kernels()->kernel_rows_at(kc, a, lda, b, boff, c, ldc, mr, nr, accumulate, e, row0);
}

void dn_kernel(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr, int accumulate,
               const dn_epilogue *e, int row0)
{
    const dn_cpu_kernels *k = kernels();
    if (k) {
        k->kernel(kc, ap, bp, c, ldc, mr, nr, accumulate, e, row0);
        return;
    }
    /* reference loops with the kernels' arithmetic (only reached when a
     * caller skips dn_packed_gemm_available) */
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) {
            float s = 0.f;
            for (int q = 0; q < kc; ++q) s = fmaf(ap[(size_t)q * DN_MR + i], bp[(size_t)q * DN_NR + j], s);
            float *o = c + (size_t)i * ldc + j;
            float v = accumulate ? *o + s : s;
            if (e) {
                v = fmaf(e->scale ? e->scale[row0 + i] : 1.f, v, e->bias ? e->bias[row0 + i] : 0.f);
                dn_affine_activate(&v, 1, 1.f, 0.f, e->act);
            }
            *o = v;
        }
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
