/* cuda.h - the CUDA backend's private interface.
 *
 * Built with DN_CUDA (PYDARKNET_CUDA=1), the network can move to a device
 * (dn_net_set_device): every layer output and delta, every parameter with its
 * gradient and optimizer state, the input and its delta get a device copy,
 * owned by the network and freed with it. While on the device, the device
 * copies hold the current values; the host copies are brought up to date
 * where the public API hands them out (outputs, parameters, deltas,
 * detections), and parameters handed out go back to the device before the
 * next device pass (the caller may have written them).
 *
 * A layer runs on the device through its ops table's forward_gpu and
 * backward_gpu (layer.cu beside layer.c); a layer without them (or a case its
 * .cu leaves to the host, dn_gpu_host_forward/backward) runs its CPU pass on
 * host copies of what it reads and writes. The loss heads keep one
 * implementation of their loss code, on the host, as darknet does for
 * [yolo]: [yolo], [region] and [softmax] compute their output on the device
 * and their loss on host copies (see the host parts below); [cost] runs
 * wholly on the host.
 *
 * The network-level work is the CUDA backend of core/backend.h (net->backend
 * while the network is on a device); this header holds what opens and closes
 * it and what the layers' .cu files use. Device pointers are plain float
 * pointers; no CUDA type appears here, so C files include this header in
 * either build. Without DN_CUDA the device queries report that the build has
 * no CUDA and dn_gpu_open fails, so a network stays on the CPU backend. This
 * header is the only place that looks at DN_CUDA. */
#ifndef DN_CUDA_H
#define DN_CUDA_H

#include "layer.h"
#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the host parts of device passes (layers/<type>.c, in either build) ----
 * The loss heads keep one implementation of their loss, on the host: after
 * the device forward, the .cu brings the head's input and output to the host
 * and calls *_train_loss (a training pass: the loss into net->loss and, when
 * the pass has truths, the head's gradient; l->has_loss tells backward). */
dn_status dn_softmax_train_loss(dn_layer *l, dn_net *net);
const float *dn_softmax_xent(const dn_layer *l);  /* the cross-entropy gradient of the last training pass, or NULL */
/* a pass's loss setup for the device's loss: whether it has one (truths and not noloss), the focal options;
 * the truths' shape checked */
dn_status dn_softmax_loss_options(dn_layer *l, const dn_net *net, int *has_loss, float *gamma, float *alpha);
int dn_softmax_has_loss(const dn_layer *l);
/* [cost]'s options for the device's loss; the truths' shape checked */
dn_status dn_cost_options(const dn_layer *l, const dn_net *net, int *type, float *scale, float *sigma, float *delta);
dn_status dn_yolo_train_loss(dn_layer *l, dn_net *net);
dn_status dn_region_train_loss(dn_layer *l, dn_net *net);
/* [reorg] and [reorg3d] share their passes: the index space of their permutation (layers/reorg.c) */
void dn_reorg_space(const dn_layer *l, int *w, int *h, int *c);
/* Draws a training pass's dropout mask from the network's generator (the CPU pass's stream and order). */
dn_status dn_dropout_mask(dn_layer *l, dn_net *net, const float **mask);

#ifdef DN_CUDA

#define DN_GPU_OPS(fwd, bwd) .forward_gpu = fwd, .backward_gpu = bwd

#ifdef __CUDACC__
/* Launch shape of the elementwise kernels: blocks of DN_BLOCK threads, each
 * thread striding over the range (DN_KERNEL_LOOP), so any n fits one launch. */
#define DN_BLOCK 256
/* The stream of the network whose pass runs in this thread: the backend sets
 * it with the device (as the CUDA runtime keeps the current device per
 * thread), and every kernel, cuBLAS/cuDNN call and copy of the pass goes on
 * it. Kernels launch with DN_LAUNCH: kernel<<<grid, DN_LAUNCH>>>(...). */
cudaStream_t dn_gpu_stream(void);
#define DN_LAUNCH DN_BLOCK, 0, dn_gpu_stream()
static inline unsigned dn_grid(size_t n)
{
    const size_t b = (n + DN_BLOCK - 1) / DN_BLOCK;
    return b < 1 ? 1u : (b > 1048576 ? 1048576u : (unsigned)b);
}
#define DN_KERNEL_LOOP(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n); i += (size_t)blockDim.x * gridDim.x)
/* Kernels over rows of a tensor (a row: one image's channel plane, or one
 * image): blocks along y take the rows, threads along x stride over a row's
 * len values, so a kernel finds its channel once per row and indexes within
 * the row in 32 bits (64-bit division is slow on a GPU). len < 2^31;
 * dn_row_grid gives the launch shape. */
static inline dim3 dn_row_grid(size_t rows, size_t len)
{
    const size_t x = (len + DN_BLOCK - 1) / DN_BLOCK, y = rows;
    return dim3(x < 1 ? 1u : (x > 4096 ? 4096u : (unsigned)x), y < 1 ? 1u : (y > 65535 ? 65535u : (unsigned)y));
}
#define DN_ROW_LOOP(row, i, rows, len)                                                   \
    for (size_t row = blockIdx.y; row < (size_t)(rows); row += gridDim.y)                \
        for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)(len); i += blockDim.x * gridDim.x)
#endif

/* ---- devices (core/cuda.cu) ---- */
dn_status dn_gpu_device_count(int *count);
dn_status dn_gpu_device_name(int index, char *buf, int size);

/* ---- the network on a device (core/cuda.cu) ---- */
dn_status dn_gpu_open(dn_net *net, int device);   /* allocates the device copies and moves the parameters */
void dn_gpu_close(dn_net *net);                   /* parameters back to the host, device memory freed */
void dn_gpu_unpin(dn_net *net);                   /* host buffers page-locked for their copies released */
int dn_gpu_device(const dn_net *net);
/* cuDNN (a build with PYDARKNET_CUDNN=1): whether the network's convolutions
 * run on it (on by default, off with PYDARKNET_CUDNN=0 in the environment
 * when the network goes to the device), and the switch. */
int dn_gpu_cudnn_on(const dn_net *net);
dn_status dn_gpu_set_cudnn(dn_net *net, int on);
/* CUDA graphs for inference passes (on with PYDARKNET_CUDA_GRAPHS=1 when the
 * network goes to the device), the switch, and how many passes a graph ran. */
int dn_gpu_graphs_on(const dn_net *net);
dn_status dn_gpu_set_graphs(dn_net *net, int on);
long long dn_gpu_graph_launches(const dn_net *net);
/* Mixed precision (pydarknet.h's dn_net_set_gpu_precision) and float16's loss scale. */
dn_status dn_gpu_set_precision(dn_net *net, int precision);
int dn_gpu_precision(const dn_net *net);
dn_status dn_gpu_set_loss_scale(dn_net *net, float scale);
dn_status dn_gpu_loss_scale(const dn_net *net, float *scale, long long *skipped);
/* While open, the network's backend is the CUDA one (core/backend.h):
 * every pass, hand-out and update goes through it. */

/* ---- for the layers' .cu files ---- */
/* The device input of layer l (the previous output or the network input) and
 * where dLoss/d(input) goes (NULL when the pass needs none). */
const float *dn_gpu_input(const dn_net *net, const dn_layer *l);
float *dn_gpu_input_delta(const dn_net *net, const dn_layer *l);
/* The layer's device scratch slot (0 .. DN_GPU_BUFS-1), grown to n floats. */
dn_status dn_gpu_buffer(dn_layer *l, int slot, size_t n, float **out);
/* The same slot grown to `bytes` (for other types than floats: 256-byte aligned by cudaMalloc). */
dn_status dn_gpu_buffer_bytes(dn_layer *l, int slot, size_t bytes, void **out);
/* dLoss/d(pre-activation) of a layer whose output is act(pre-activation):
 * its delta itself for a linear act, else a copy in scratch slot 1 times
 * f'(.) (from the output, and from the pre-activation values a training
 * forward pass kept in slot 0 when the kind needs them). */
dn_status dn_gpu_activation_delta(dn_layer *l, dn_activation act, int channels, int spatial, const float **out);
/* The cuDNN handle while the network's convolutions use cuDNN, else NULL. */
void *dn_gpu_cudnn(const dn_net *net);
/* Layer l's plan: a zeroed block of `size` bytes kept with the device copies
 * until they are reallocated (a resize) or freed, when release(block) runs
 * first; *fresh = 1 when it was just made. */
dn_status dn_gpu_plan(dn_net *net, const dn_layer *l, size_t size, void (*release)(void *), void **out, int *fresh);
/* The network's device workspace, grown to n floats (shared by all layers). */
dn_status dn_gpu_workspace(dn_net *net, size_t n, float **out);
/* The CPU pass of layer l on host copies (for cases a .cu leaves to the host). */
dn_status dn_gpu_host_forward(dn_net *net, dn_layer *l);
/* A loss head's training pass with truths on the host: its CPU forward on the
 * pulled input makes the host output (one copy fewer than pulling the
 * device's), the loss and l->delta, which goes to the device. */
dn_status dn_gpu_host_loss(dn_net *net, dn_layer *l);
dn_status dn_gpu_host_backward(dn_net *net, dn_layer *l);
/* Copies of n floats between a host and a device buffer (nothing for NULL or n = 0). */
/* PYDARKNET_LOSS=device: the loss heads that have a device loss ([yolo], [softmax]) compute it there instead of
 * on the host (written without a GPU to run it on: off by default until a device run checks it) */
int dn_gpu_loss_on_device(void);
dn_status dn_gpu_push(float *dev, const float *host, size_t n);
/* The loss of a device loss kernel: runs x per doubles pulled (into a page-locked buffer the network keeps) and
 * added as the CPU's loss adds them, each run in order, times scale, then the runs in order, into *total. */
dn_status dn_gpu_loss_total(dn_net *net, const double *dev, size_t runs, size_t per, double scale, double *total);
dn_status dn_gpu_pull(float *host, const float *dev, size_t n);
/* Host copies brought up to date of the outputs layer l reads (the previous
 * layer's and those its `layers`/`from` name) and of its own output, for a
 * part of its pass that runs on the host (a loss). */
dn_status dn_gpu_pull_sources(dn_net *net, dn_layer *l);
/* The status of the kernels launched so far (DN_ERR_STATE naming the layer and `what` on failure). */
dn_status dn_gpu_check(const dn_layer *l, const char *what);
/* C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, device pointers (cuBLAS). `grad` names the operand that
 * is a gradient (a delta), if any: DN_GEMM_GRAD_A or _B (the loss scale applies to it in float16, see
 * dn_net_set_gpu_precision), else DN_GEMM_VALUES. In float32 a plain SGEMM. */
enum { DN_GEMM_VALUES = 0, DN_GEMM_GRAD_A = 1, DN_GEMM_GRAD_B = 2 };
dn_status dn_gpu_gemm(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc, int grad);
/* `count` such products at once, operand i at A + i*stride_a (0: the same A for all), B + i*stride_b,
 * C + i*stride_c (cuBLAS's strided batched GEMM) */
dn_status dn_gpu_gemm_strided(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha,
                              const float *A, int lda, long long stride_a, const float *B, int ldb, long long stride_b,
                              float beta, float *C, int ldc, long long stride_c, int count, int grad);

/* ---- device kernels (the .cu files in ops), the twins of the CPU functions in internal.h ---- */
void dn_gpu_activate(float *x, int batch, int channels, int spatial, dn_activation a);
void dn_gpu_activation_backward(const float *y, const float *x, float *delta, int batch, int channels, int spatial,
                                dn_activation a);
/* im2col of `images` images im_stride floats apart, their columns one after the other (stride K*N) */
void dn_gpu_im2col_images(const float *im, int images, size_t im_stride, int channels, int height, int width,
                          int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                          float *col);
void dn_gpu_im2col(const float *im, int channels, int height, int width, int ksize, int pad, int stride_h,
                   int stride_w, int dilation, int out_h, int out_w, float *col);
/* the same columns as [K][images][N]: row r holds every image's run of N, one after the other */
void dn_gpu_im2col_interleaved(const float *im, int images, size_t im_stride, int channels, int height, int width,
                               int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                               float *col);
/* rows x len values of each image (src_image floats apart, rows src_row apart) regrouped as [rows][images][len] */
void dn_gpu_gather_images(float *dst, const float *src, int images, size_t rows, size_t len, size_t src_image,
                          size_t src_row);
/* im += the adjoint of im2col applied to col */
/* col2im of `images` images' columns (one after the other) into images im_stride floats apart */
void dn_gpu_col2im_images(const float *col, int images, size_t im_stride, int channels, int height, int width,
                          int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                          float *im);
void dn_gpu_col2im(const float *col, int channels, int height, int width, int ksize, int pad, int stride_h,
                   int stride_w, int dilation, int out_h, int out_w, float *im);
void dn_gpu_fill(float *x, size_t n, float value);
void dn_gpu_copy(float *dst, const float *src, size_t n);
void dn_gpu_axpy(float *y, const float *x, size_t n, float a);  /* y += a * x */
/* rows runs of len floats, dst_stride and src_stride apart: dst = src, or dst += src with add */
void dn_gpu_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t rows, size_t len,
                      int add);
/* Per-channel sums (bias gradient, batch norm) take device scratch of
 * dn_gpu_channel_scratch(batch, channels, spatial) floats (the network's
 * workspace serves: nothing else is in it while they run). */
size_t dn_gpu_channel_scratch(int batch, int channels, int spatial);
void dn_gpu_backward_bias(float *grad, float *delta, int batch, int channels, int spatial, float *scratch);
/* batch norm's batch mean and (unbiased) variance per channel, the rolling ones moved: keep * rolling + share * batch */
void dn_gpu_batchnorm_statistics(const float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                 float *rolling_mean, float *rolling_variance, float keep, float share, float *scratch);
/* A layer's output stage in one pass (ops/blas.cu): x = f((x - mean) / sqrt(variance + .00001) * scale + bias),
 * or f(x + bias) with mean NULL; x_norm (with mean) and pre (the value before f) kept where not NULL. The
 * backward: delta *= f'(x, pre), bias_grad += its channel sums; with x_norm, batch norm's backward (scale_grad
 * += sum delta * x_norm, then delta through the normalization); the same values as the separate passes. */
void dn_gpu_output_stage(float *x, float *x_norm, const float *mean, const float *variance, const float *scale,
                         const float *bias, float *pre, int batch, int channels, int spatial, dn_activation a);
void dn_gpu_output_stage_backward(float *delta, const float *y, const float *pre, dn_activation act,
                                  const float *x_norm, const float *variance, const float *scales, float *scale_grad,
                                  float *bias_grad, int batch, int channels, int spatial, float *scratch);
void dn_gpu_mul(float *y, const float *a, const float *b, size_t n);     /* y = a * b */
void dn_gpu_mul_add(float *y, const float *a, const float *b, size_t n); /* y += a * b */
/* The softmax with temperature of `groups` groups of n values `stride` apart;
 * group g starts at (g / inner) * outer + g % inner (ops/layer_math.h's
 * dn_softmax_group per thread). The backward adds the Jacobian applied to g
 * into d (dn_softmax_group_backward), p the softmax output. */
void dn_gpu_softmax(const float *in, float *out, size_t groups, int n, size_t stride, int inner, size_t outer,
                    float temp);
void dn_gpu_softmax_backward(const float *p, const float *g, float *d, size_t groups, int n, size_t stride, int inner,
                             size_t outer, float temp);
void dn_gpu_update_kernel(float *w, float *g, float *m, float *v, size_t n, const dn_update_args *a);

/* ---- the layers with device passes (layers/<type>.cu; core/layer_list.h) ---- */
#define DN_LAYER(name)
#define DN_LAYER_GPU(name)                                     \
    dn_status dn_##name##_forward_gpu(dn_layer *l, dn_net *net); \
    dn_status dn_##name##_backward_gpu(dn_layer *l, dn_net *net);
#include "layer_list.h"
#undef DN_LAYER
#undef DN_LAYER_GPU

#else /* no CUDA: never reached, net->cuda stays NULL */

#define DN_GPU_OPS(fwd, bwd) .forward_gpu = NULL, .backward_gpu = NULL

static inline dn_status dn_gpu_device_count(int *count)
{
    *count = 0;
    return dn_fail(DN_ERR_UNSUPPORTED, "this build has no CUDA; rebuild with PYDARKNET_CUDA=1 pip install .");
}
static inline dn_status dn_gpu_device_name(int index, char *buf, int size)
{
    (void)index;
    if (buf && size > 0) buf[0] = 0;
    return dn_gpu_device_count(&size);
}
static inline dn_status dn_gpu_open(dn_net *net, int device)
{
    (void)net;
    (void)device;
    return dn_gpu_device_count(&device);
}
static inline void dn_gpu_close(dn_net *net) { (void)net; }
static inline void dn_gpu_unpin(dn_net *net) { (void)net; }
static inline int dn_gpu_device(const dn_net *net) { (void)net; return -1; }
static inline int dn_gpu_cudnn_on(const dn_net *net) { (void)net; return 0; }
static inline dn_status dn_gpu_set_cudnn(dn_net *net, int on)
{
    (void)net;
    return on ? dn_fail(DN_ERR_UNSUPPORTED, "this build has no cuDNN (PYDARKNET_CUDA=1 PYDARKNET_CUDNN=1 builds it)")
              : DN_OK;
}
static inline int dn_gpu_graphs_on(const dn_net *net) { (void)net; return 0; }
static inline dn_status dn_gpu_set_graphs(dn_net *net, int on)
{
    (void)net;
    return on ? dn_fail(DN_ERR_STATE, "the network is not on a CUDA device (this build has no CUDA)") : DN_OK;
}
static inline long long dn_gpu_graph_launches(const dn_net *net) { (void)net; return 0; }
static inline dn_status dn_gpu_set_precision(dn_net *net, int precision)
{
    (void)net;
    return precision ? dn_fail(DN_ERR_STATE, "the network is not on a CUDA device (this build has no CUDA)") : DN_OK;
}
static inline int dn_gpu_precision(const dn_net *net) { (void)net; return 0; }
static inline dn_status dn_gpu_set_loss_scale(dn_net *net, float scale)
{
    (void)net;
    (void)scale;
    return dn_fail(DN_ERR_STATE, "the network is not on a CUDA device (this build has no CUDA)");
}
static inline dn_status dn_gpu_loss_scale(const dn_net *net, float *scale, long long *skipped)
{
    (void)net;
    *scale = 1.f;
    *skipped = 0;
    return DN_OK;
}

#endif /* DN_CUDA */

#ifdef __cplusplus
}
#endif
#endif /* DN_CUDA_H */
