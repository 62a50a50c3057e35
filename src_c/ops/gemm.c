/* gemm.c - C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major.
 *
 * dn_gemm_serial is one call in the calling thread. dn_gemm, with the worker
 * threads in use (DN_SPEED_THREADS), cuts C into tiles chosen from the shape
 * alone (dn_gemm_plan) and runs one serial GEMM per tile on the pool, so every
 * element of C is computed the same way whatever the thread count; without
 * them it is one call (OpenBLAS then uses its own threads).
 *
 * The BLAS path calls OpenBLAS's cblas_sgemm (built with DN_USE_BLAS; the
 * PyPI package scipy-openblas32 prefixes its symbols with `scipy_`, set by
 * DN_BLAS_PREFIX). The portable path is a plain cache-friendly loop nest that
 * keeps the core buildable and testable without any BLAS; a network chooses
 * between them at run time (dn_net_set_blas). */
#include "ops.h"
#include "blas_link.h"

void dn_gemm_portable(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; ++i) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.f) {
            for (int j = 0; j < N; ++j) c[j] = 0.f;
        } else if (beta != 1.f) {
            for (int j = 0; j < N; ++j) c[j] *= beta;
        }
        for (int k = 0; k < K; ++k) {
            float a = alpha * (trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
            if (a == 0.f) continue;
            if (!trans_b) {
                const float *b = B + (size_t)k * ldb;
                for (int j = 0; j < N; ++j) c[j] += a * b[j];
            } else {
                for (int j = 0; j < N; ++j) c[j] += a * B[(size_t)j * ldb + k];
            }
        }
    }
}

void dn_gemm_serial(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
#ifdef DN_USE_BLAS
    if (net->use_blas) {
        DN_BLAS(cblas_sgemm)(DN_ROW_MAJOR, trans_a ? DN_TRANS : DN_NO_TRANS, trans_b ? DN_TRANS : DN_NO_TRANS, M, N, K,
                             alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    (void)net;
    dn_gemm_portable(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---- GEMM split into tiles of C over the worker threads ---- */

void dn_gemm_plan(int M, int N, int K, int *mt, int *nt)
{
    /* halve the longer side until there are enough tiles to share, keeping
     * each tile big enough (about 2^20 multiply-adds) to run at full speed */
    int m = M, n = N;
    const double min_work = 1048576.0;
    while ((size_t)((M + m - 1) / m) * ((N + n - 1) / n) < 16) {
        if (n >= 2 * m && n >= 128 && (double)m * (n / 2) * K >= min_work) n = (n / 2 + 31) / 32 * 32;
        else if (m >= 32 && (double)(m / 2) * n * K >= min_work) m = (m / 2 + 15) / 16 * 16;
        else if (n >= 128 && (double)m * (n / 2) * K >= min_work) n = (n / 2 + 31) / 32 * 32;
        else break;
    }
    *mt = m;
    *nt = n;
}

typedef struct {
    const dn_net *net;
    int trans_a, trans_b, M, N, K, lda, ldb, ldc, mt, nt, n_tiles;
    float alpha, beta;
    const float *A, *B;
    float *C;
} gemm_job;

static void gemm_tile(void *ctx, int task, int worker)
{
    (void)worker;
    const gemm_job *j = ctx;
    const int m0 = task / j->n_tiles * j->mt, n0 = task % j->n_tiles * j->nt;
    const int m = j->M - m0 < j->mt ? j->M - m0 : j->mt, n = j->N - n0 < j->nt ? j->N - n0 : j->nt;
    const float *a = j->trans_a ? j->A + m0 : j->A + (size_t)m0 * j->lda;
    const float *b = j->trans_b ? j->B + (size_t)n0 * j->ldb : j->B + n0;
    dn_gemm_serial(j->net, j->trans_a, j->trans_b, m, n, j->K, j->alpha, a, j->lda, b, j->ldb, j->beta,
                   j->C + (size_t)m0 * j->ldc + n0, j->ldc);
}

void dn_gemm(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (!(net->speed & DN_SPEED_THREADS) || !net->pool) {
        dn_gemm_serial(net, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    gemm_job j = {net, trans_a, trans_b, M, N, K, lda, ldb, ldc, 0, 0, 0, alpha, beta, A, B, C};
    dn_gemm_plan(M, N, K, &j.mt, &j.nt);
    j.n_tiles = (N + j.nt - 1) / j.nt;
    dn_parallel(net, (M + j.mt - 1) / j.mt * j.n_tiles, gemm_tile, &j);
}
