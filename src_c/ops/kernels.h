/* kernels.h - the packed GEMM's CPU micro-kernels, one table per instruction
 * set (ops/kernel_avx512.c, ops/kernel_avx2.c); ops/gemm_packed.c picks one
 * at run time and the rest of the core reaches them through ops.h.
 *
 * Every kernel computes each value of C as the same chain of fused
 * multiply-adds in k order (then the same add to C and the same epilogue),
 * so all of them give the same bits for the same GEMM. */
#ifndef DN_KERNELS_H
#define DN_KERNELS_H

#include "ops.h"

typedef struct dn_cpu_kernels {
    const char *name;
    void (*kernel)(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr, int accumulate,
                   const dn_epilogue *e, int row0);
    void (*kernel_rows)(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, int mr, int nr,
                        int accumulate, const dn_epilogue *e, int row0);
    void (*transpose16)(const float *in, size_t ld_in, float *out, size_t ld_out);
    void (*transpose_panel)(const float *rows, size_t ld, int n, float *bp);
    void (*prefetch_tile)(const float *c, size_t ldc, int rows);
    /* the fewest 4x4 output tiles for which a 3x3 convolution runs Winograd
     * (winograd.c) rather than the direct kernel path: the slower the kernel's
     * arithmetic, the smaller the layers at which Winograd's memory traffic pays */
    int winograd_min_tiles;
    /* kernel_rows with B's row k at b + boff[k] (unaligned; NULL where a
     * kernel has none): the direct convolution's taps (conv_tiled.c) */
    void (*kernel_rows_at)(int kc, const float *a, size_t lda, const float *b, const int *boff, float *c, size_t ldc,
                           int mr, int nr, int accumulate, const dn_epilogue *e, int row0);
} dn_cpu_kernels;

/* NULL where the compiler cannot build them (not x86-64 GCC/clang) */
const dn_cpu_kernels *dn_kernels_avx512(void);
const dn_cpu_kernels *dn_kernels_avx2(void);

/* PREFETCHW of every line the rows of a micro-tile can touch (gemm_packed.c;
 * only on CPUs with PRFCHW) */
void dn_prefetch_tile_prfchw(const float *c, size_t ldc, int rows);

/* The activations a kernel does not apply in registers (all but linear,
 * leaky and relu), over the stored mr x nr tile. */
void dn_kernel_activate_rest(float *c, size_t ldc, int mr, int nr, const dn_epilogue *e);

#endif
