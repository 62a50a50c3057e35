/* blas_link.h - the OpenBLAS symbols the library links (built with
 * DN_USE_BLAS): the PyPI package scipy-openblas32 prefixes them with
 * `scipy_` (DN_BLAS_PREFIX). core/pool.c sets OpenBLAS's threads, ops/gemm.c
 * calls its SGEMM. */
#ifndef DN_BLAS_LINK_H
#define DN_BLAS_LINK_H

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

#endif /* DN_BLAS_LINK_H */
