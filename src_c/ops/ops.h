/*
 * ops.h - the numeric kernels the layers share (the .c files of ops/): activations, GEMM
 * (a BLAS or the portable loops, and the packed kernel), im2col/col2im,
 * bias, batch norm, softmax, the tiled and Winograd convolutions, pooling.
 * They work on plain arrays; the few that take a layer are the
 * activation tail of a layer (dn_activate_output, dn_activation_delta) and
 * pooling's option reader.
 */
#ifndef DN_OPS_H
#define DN_OPS_H

#include "layer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- activations (ops/activations.c) ---- */
/* Applies `a` in place to x laid out as [batch][channels][spatial]. The
 * normalize_channels kinds work across channels, the others elementwise. */
void dn_activate(float *x, int batch, int channels, int spatial, dn_activation a);
/* delta *= f'(.) in place, given the activated output y = f(x) (and, for the
 * kinds whose derivative needs it, the input x; may be NULL otherwise). */
void dn_activation_backward(const float *y, const float *x, float *delta, int batch, int channels, int spatial,
                            dn_activation a);
/* x[i] = 1 / (1 + e^-x[i]) with a vectorized exponential (about 2 ulp from expf). */
void dn_logistic_vec(float *x, size_t n);
/* x[i] = f(a * x[i] + b) for n values (the fused epilogue of a convolution tile;
 * logistic through dn_logistic_vec's exponential). */
void dn_affine_activate(float *x, size_t n, float a, float b, dn_activation act);
/* The activation that ends a layer whose output is act(pre-activation)
 * (shortcut, sam, scale_channels). Forward: in a training pass, keeps the
 * pre-activation output in *x (grown as needed) when f' needs it, then
 * applies act to the layer's output. Backward: *out = dLoss/d(pre-activation),
 * the layer's delta itself for a linear act, else a copy in *g times f'(.). */
dn_status dn_activate_output(dn_layer *l, const dn_net *net, dn_activation act, float **x, size_t *x_cap);
/* [reduction]'s options (layers/reduction.c, for its CPU and device passes): the operation (layer_math.h's
 * DN_REDUCE_*), coeff, and n, the input values each output value reduces */
dn_status dn_reduction_options(const dn_layer *l, int *op, float *coeff, size_t *n);
dn_status dn_activation_delta(dn_layer *l, dn_activation act, const float *x, size_t x_cap, float **g,
                              size_t *g_cap, const float **out);

/* ---- numeric kernels (ops/) ---- */
/* C[M,N] = alpha * op(A) * op(B) + beta * C, row-major. */
void dn_gemm(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);
/* The same as one call in the calling thread (for use inside pool tasks). */
void dn_gemm_serial(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* Tile sizes dn_gemm uses to split C over the workers (from the shape alone). */
void dn_gemm_plan(int M, int N, int K, int *mt, int *nt);
void dn_gemm_portable(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
void dn_im2col(const float *im, int channels, int height, int width, int ksize_h, int ksize_w, int pad_h, int pad_w,
               int stride_h, int stride_w, int dilation_h, int dilation_w, int out_h, int out_w, float *col);
void dn_im2col_range(const float *im, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
                     int stride_h, int stride_w, int dil_h, int dil_w, int out_h, int out_w, int n0, int n1, float *col);
void dn_im2col_row(const float *im, int height, int width, int ky, int kx, int pad_h, int pad_w, int stride_h,
                   int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, float *dst);
/* The same row written straight into the packed GEMM's B panels (see dn_pack_b_row), padded with zeros. */
void dn_im2col_row_panels(const float *im, int height, int width, int ky, int kx, int pad_h, int pad_w, int stride_h,
                          int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, int kc, int kk, float *bp);
void dn_add_bias(float *out, const float *bias, int batch, int channels, int spatial);
void dn_scale_bias(float *out, const float *scale, int batch, int channels, int spatial);
void dn_normalize(float *x, const float *mean, const float *variance, int batch, int channels, int spatial);
/* Training-mode batch normalization, darknet's: per channel over its n = batch*spatial
 * values, mean and unbiased variance (1/(n-1)); x normalized in place with .00001
 * epsilon, copied to x_norm; rolling = keep*rolling + share*batch statistic, darknet's
 * CPU constants (core/layer.h: DN_BN_ROLLING, DN_BN_ROLLING_CONNECTED). Needs n >= 2. */
void dn_batchnorm_forward_train(float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                float *x_norm, float *rolling_mean, float *rolling_variance, float keep, float share);
/* Backward of y = scale*x_norm (+ bias): scale_grad[c] += sum delta*x_norm (unless NULL),
 * then delta becomes dLoss/dx in place (exact derivative through mean and unbiased variance). */
void dn_batchnorm_backward(float *delta, const float *x_norm, const float *variance, const float *scales,
                           float *scale_grad, int batch, int channels, int spatial);
/* Channel c alone of the functions around (the same arithmetic, for loops
 * split over channels on the worker threads); bias/scale may be NULL. */
void dn_batchnorm_forward_train_channel(float *x, int batch, int channels, int spatial, int c, float *mean,
                                        float *variance, float *x_norm, float *rolling_mean, float *rolling_variance,
                                        float keep, float share);
void dn_normalize_channel(float *x, const float *mean, const float *variance, int batch, int channels, int spatial,
                          int c);
void dn_scale_add_bias_channel(float *x, const float *scale, const float *bias, int batch, int channels, int spatial,
                               int c);
void dn_backward_bias_channel(float *grad, const float *delta, int batch, int channels, int spatial, int c);
void dn_batchnorm_backward_channel(float *delta, const float *x_norm, const float *variance, const float *scales,
                                   float *scale_grad, int batch, int channels, int spatial, int c);
/* grad[c] += sum over batch and spatial of delta (the bias gradient). */
void dn_backward_bias(float *grad, const float *delta, int batch, int channels, int spatial);
void dn_col2im(const float *col, int channels, int height, int width, int ksize_h, int ksize_w, int pad_h, int pad_w,
               int stride_h, int stride_w, int dilation_h, int dilation_w, int out_h, int out_w, float *im);
float dn_logistic(float x);
void dn_softmax(const float *in, int n, float temp, int stride, float *out);

/* ---- the packed GEMM kernel (ops/gemm_packed.c) ---- */
#define DN_MR 8    /* rows of a micro-tile (A panel width) */
#define DN_NR 32   /* columns of a micro-tile (B panel width) */
#define DN_KC 128  /* K is cut into blocks of this many values */
typedef struct dn_epilogue {
    const float *scale, *bias; /* per row of C (NULL: 1 and 0) */
    dn_activation act;
} dn_epilogue;
/* 1 when a packed kernel runs (AVX-512 or AVX2 + FMA, chosen at run time; see dn_cpu_kernel). */
int dn_packed_gemm_available(void);
/* the fewest 4x4 output tiles at which Winograd pays with the kernel in use (0: no kernel) */
int dn_packed_winograd_min_tiles(void);
/* The L2 cache of one core in bytes (2 MiB when the system does not say),
 * which sizes the packed convolution's column tiles; PYDARKNET_CPU_L2 (bytes,
 * or with K or M; read once) stands in for it, to measure other sizes. */
size_t dn_cpu_l2_bytes(void);
/* Panels: ap [kc][DN_MR] from mr rows of A (A[i][k] at a[i*lda+k], or a[k*lda+i]
 * when trans); bp [panel][kc][DN_NR] from n columns of B (B[k][j] at
 * b[k*ldb+j], or b[j*ldb+k] when trans); dn_pack_b_row packs one k (the kk-th
 * of the block) from n contiguous values. Padding is zero. bp 64-byte aligned. */
void dn_pack_a(const float *a, int trans, int lda, int mr, int kc, float *ap);
void dn_pack_b(const float *b, int trans, int ldb, int kc, int n, float *bp);
void dn_pack_b_row(const float *row, int n, int kc, int kk, float *bp);
/* c[mr x nr] (= or +=) ap * bp over kc; with e, then c = act(scale*c + bias) per row (rows row0...). */
void dn_kernel(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr, int accumulate,
               const dn_epilogue *e, int row0);
/* The same reading A in place: row i at a + i*lda (kc <= DN_KC). */
void dn_kernel_rows(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, int mr, int nr,
                    int accumulate, const dn_epilogue *e, int row0);
/* The same with B's row k at b + boff[k] (DN_NR floats, any alignment), where
 * dn_kernel_rows_at_available (the kernel in use has it): the same bits. */
int dn_kernel_rows_at_available(void);
void dn_kernel_rows_at(int kc, const float *a, size_t lda, const float *b, const int *boff, float *c, size_t ldc,
                       int mr, int nr, int accumulate, const dn_epilogue *e, int row0);
/* Prefetches for writing (prefetchw) the lines of `rows` rows of a micro-tile
 * (DN_NR floats each, row i at c + i*ldc) that a kernel call will store next;
 * nothing on CPUs without the kernel. */
void dn_prefetch_tile_for_write(const float *c, size_t ldc, int rows);
/* B panel [n][DN_NR] from DN_NR rows of n values, row i at rows + i*ld: bp[j*DN_NR + i] = rows[i*ld + j]
 * (bp 64-byte aligned). */
void dn_transpose_panel(const float *rows, size_t ld, int n, float *bp);
/* out[j*ld_out + i] = in[i*ld_in + j] for a 16 x 16 block. */
void dn_transpose16(const float *in, size_t ld_in, float *out, size_t ld_out);
/* C = op(A) op(B) (+ C) on the kernel, tiles over the workers; scratch per
 * worker: dn_packed_gemm_scratch(nt) bytes of layer l's worker workspace. */
void dn_packed_gemm_plan(int M, int N, int *mt, int *nt);
size_t dn_packed_gemm_scratch(int nt);
void dn_packed_gemm(const dn_net *net, const dn_layer *l, int ta, int tb, int M, int N, int K, const float *A, int lda,
                    const float *B, int ldb, int accumulate, float *C, int ldc);

/* ---- convolution forward as tiles over the worker threads (ops/conv_tiled.c) ---- */
typedef struct dn_conv_desc {
    int batch, c, h, w, out_h, out_w;      /* input and output per image */
    int filters, groups, size, stride_x, stride_y, pad, dilation; /* pad: pixels before the image (padding*dilation) */
    const float *weights;                  /* [filters][c/groups][size][size] */
} dn_conv_desc;
/* Scratch the tiled forward needs: shared bytes and bytes per worker. */
void dn_conv_tiled_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker);
/* output = W * im2col(input) per image and group; then, when scale and bias are
 * given (per filter), output = act(scale * output + bias) tile by tile. */
void dn_conv_tiled_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                           float *output, const float *scale, const float *bias, dn_activation act);
/* The same on the packed kernel (packed = 1, where dn_packed_gemm_available)
 * or on OpenBLAS per tile (0), whatever the network's speed bits say. */
void dn_conv_tiled_forward_on(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                              float *output, const float *scale, const float *bias, dn_activation act, int packed);

/* The direct convolution on the kernel (stride 1, no groups; where
 * dn_kernel_rows_at_available): each output row's strips of DN_NR pixels
 * read their taps from a zero-framed copy of the input, no im2col, no
 * packing; the same bits as the packed path. */
int dn_conv_direct_applies(const dn_conv_desc *d);
void dn_conv_direct_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker);
void dn_conv_direct_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                            float *output, const float *scale, const float *bias, dn_activation act);

/* ---- Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions in inference (ops/winograd.c) ---- */
/* 1 when the shape suits it (3x3, stride 1, no dilation or groups, enough tiles) and the kernel runs here. */
int dn_winograd_applies(const dn_conv_desc *d);
void dn_winograd_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker);
/* Bytes of the block that keeps a layer's transformed filters between passes
 * (allocated zeroed by the layer, for its filters and channels). */
size_t dn_winograd_cache_bytes(const dn_conv_desc *d);
/* output = act(scale * conv(input) + bias) (scale, bias per filter; NULL: 1
 * and 0); the filters' transforms come from `cache`, made again for the
 * filters whose weights changed since the last pass */
void dn_winograd_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, void *cache,
                         const float *input, float *output, const float *scale, const float *bias, dn_activation act);

/* ---- one channel's batch norm, bias and activation (ops/bn_fused.c) ---- */
typedef struct dn_bn_channel {
    int batch, channels, spatial;
    int train;            /* batch statistics (and x_norm, mean, variance, rolling update) */
    int batch_normalize;  /* else bias only */
    int keep_x;           /* keep the pre-activation values in `pre` (forward) / they are there (backward) */
    int elementwise;      /* the activation is applied per channel (else the caller does it) */
    dn_activation activation;
    float *x;             /* [batch][channels][spatial]: forward in place; backward: the output y */
    float *pre, *x_norm, *mean, *variance, *rolling_mean, *rolling_variance;
    const float *scales, *biases;
    /* Synchronized batch norm (the statistics of every process's mini-batch, summed between the phases by the
     * caller): phase 0 is the whole pass. Forward: 1 sums x into sums[c]; 2 sums (x - mean[c])^2 into sums[c];
     * 3 is the rest with mean[c] and variance[c] given (the rolling statistics are the caller's). Backward: 1 is
     * the activation's gradient, the bias and scale gradients (of this mini-batch) and the sums of delta and of
     * delta*x_norm into sums[2c], sums[2c + 1]; 2 is the batch-norm step from those sums over `count` values. */
    int phase;
    double *sums;
    double count;
} dn_bn_channel;
/* x = act(scale * (x - mean) / sqrt(var + .00001) + bias) for channel c (statistics
 * of the batch in training, rolling otherwise; bias alone without batch norm). */
void dn_bn_forward_channel(const dn_bn_channel *p, int c);
/* delta (dLoss/dy in, dLoss/dz out) of channel c: activation, bias and scale
 * gradients (either may be NULL), batch norm through the batch statistics. */
void dn_bn_backward_channel(const dn_bn_channel *p, int c, float *delta, float *bias_grad, float *scale_grad);
/* an elementwise activation on n values */
void dn_activate_slice(float *x, size_t n, dn_activation a);

/* ---- a convolution's gradients on the packed kernel (ops/conv_backward.c) ---- */
void dn_conv_backward_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker);
/* wgrad[filters][c/groups*size*size] += sum over the batch of delta * im2col(input)^T */
void dn_conv_weight_grad(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                         const float *delta, float *wgrad);
/* in_delta += col2im(W^T * delta) */
void dn_conv_input_grad(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *delta,
                        float *in_delta);
/* The adjoint of dn_im2col_range: adds col ([channels*kh*kw][n1-n0]) back onto im. */
void dn_col2im_range(const float *col, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
                     int stride_h, int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, float *im);

/* ---- pooling shared by maxpool and local_avgpool (ops/pool.c) ---- */
typedef enum { DN_POOL_MAX, DN_POOL_AVG } dn_pool_kind;
/* Reads a pooling window's size, stride_x, stride_y and padding options. */
dn_status dn_pool_window(const dn_layer *l, int *size, int *stride_x, int *stride_y, int *padding);
void dn_pool2d(const float *in, int batch, int channels, int h, int w, int size, int stride_y, int stride_x,
               int padding, int out_h, int out_w, dn_pool_kind kind, float *out);

/* size 2, stride 2, windows inside the image (-padding/2 == 0, 2*out_h <= h, 2*out_w <= w) */
void dn_maxpool2x2(const float *in, int planes, int h, int w, int out_h, int out_w, float *out);
/* dn_pool2d's max, row pass then column pass (tmp: h * out_w floats) */
void dn_maxpool_separable(const float *in, int planes, int h, int w, int size, int stride_y, int stride_x,
                          int padding, int out_h, int out_w, float *out, float *tmp);

#ifdef __cplusplus
}
#endif
#endif /* DN_OPS_H */
