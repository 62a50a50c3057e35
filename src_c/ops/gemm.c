/* gemm.c - C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major.
 *
 * The BLAS path calls OpenBLAS's cblas_sgemm (built with DN_USE_BLAS; the
 * PyPI package scipy-openblas32 prefixes its symbols with `scipy_`, set by
 * DN_BLAS_PREFIX). The portable path is a plain cache-friendly loop nest that
 * keeps the core buildable and testable without any BLAS; a network chooses
 * between them at run time (dn_net_set_blas). */
#include "internal.h"

#ifdef DN_USE_BLAS
#ifndef DN_BLAS_PREFIX
#define DN_BLAS_PREFIX scipy_
#endif
#define DN_CAT2(a, b) a##b
#define DN_CAT(a, b) DN_CAT2(a, b)
#define DN_BLAS(name) DN_CAT(DN_BLAS_PREFIX, name)
enum { DN_ROW_MAJOR = 101, DN_NO_TRANS = 111, DN_TRANS = 112 };
void DN_BLAS(cblas_sgemm)(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *B, int ldb, float beta, float *C, int ldc);
void DN_BLAS(openblas_set_num_threads)(int n);
int DN_BLAS(openblas_get_num_threads)(void);
#endif

int dn_blas_available(void)
{
#ifdef DN_USE_BLAS
    return 1;
#else
    return 0;
#endif
}

void dn_blas_set_threads(int threads)
{
#ifdef DN_USE_BLAS
    if (DN_BLAS(openblas_get_num_threads)() != threads) DN_BLAS(openblas_set_num_threads)(threads);
#else
    (void)threads;
#endif
}

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

void dn_gemm(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc)
{
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
