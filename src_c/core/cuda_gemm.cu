/* cuda_gemm.cu - the CUDA backend's matrix products: dn_gpu_gemm and
 * dn_gpu_gemm_strided (cuBLAS; the row-major products as column-major
 * transposes), in float32 or, with mixed precision, with their operands
 * rounded to float16/bfloat16 on the tensor cores; float16's dynamic loss
 * scale and the check before an update that skips an iteration whose
 * gradients overflowed (pydarknet.h, dn_net_set_gpu_precision). */
#include "cuda_context.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdlib.h>
#include <string.h>

/* ---- mixed precision ---- */
#define LOSS_SCALE_START 65536.f
#define LOSS_SCALE_MAX 16777216.f
#define LOSS_SCALE_GROWTH_UPDATES 2000

static const char *const precision_names[] = {"float32", "float16", "bfloat16"};

int dn_gpu_precision(const dn_net *net) { return net->cuda ? net->cuda->precision : 0; }

dn_status dn_gpu_set_precision(dn_net *net, int precision)
{
    dn_cuda *ctx = net->cuda;
    if (!ctx) return precision ? dn_fail(DN_ERR_STATE, "the network is not on a CUDA device") : DN_OK;
    if (ctx->precision != precision) {
        dn_cuda_free_plans(ctx); /* cuDNN's plans go (mixed precision takes the cuBLAS path); the layout changes */
        ctx->loss_scale = precision == DN_PRECISION_FLOAT16 ? LOSS_SCALE_START : 1.f;
        ctx->good_updates = 0;
    }
    ctx->precision = precision;
    return DN_OK;
}

/* PYDARKNET_CUDA_PRECISION=float32|float16|bfloat16 when the network goes to the device */
dn_status dn_cuda_precision_from_environment(dn_net *net)
{
    const char *v = getenv("PYDARKNET_CUDA_PRECISION");
    if (!v || !*v) return DN_OK;
    for (int p = 0; p < 3; ++p)
        if (!strcmp(v, precision_names[p])) return dn_gpu_set_precision(net, p);
    return dn_fail(DN_ERR_ARG, "PYDARKNET_CUDA_PRECISION=%s: give float32, float16 or bfloat16", v);
}

dn_status dn_gpu_set_loss_scale(dn_net *net, float scale)
{
    dn_cuda *ctx = net->cuda;
    if (!ctx || ctx->precision != DN_PRECISION_FLOAT16)
        return dn_fail(DN_ERR_STATE, "the loss scale is float16's: the network is not on a CUDA device in float16");
    ctx->loss_scale = scale;
    ctx->good_updates = 0;
    return DN_OK;
}

dn_status dn_gpu_loss_scale(const dn_net *net, float *scale, long long *skipped)
{
    *scale = net->cuda ? net->cuda->loss_scale : 1.f;
    *skipped = net->cuda ? net->cuda->skipped_updates : 0;
    return DN_OK;
}

template <typename T> __device__ T to_reduced(float x);
template <> __device__ __half to_reduced<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __nv_bfloat16 to_reduced<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T> __global__ void reduce_kernel(const float *x, T *y, size_t n, float scale)
{
    DN_KERNEL_LOOP(i, n) y[i] = to_reduced<T>(x[i] * scale);
}

/* How many floats from its start a product's operand spans: op(X) is rows x cols, X row-major with leading
 * dimension ld (X itself cols x rows when transposed), `count` of them `stride` apart. */
static size_t operand_extent(int trans, int rows, int cols, int ld, long long stride, int count)
{
    if (rows <= 0 || cols <= 0 || count <= 0) return 0;
    const size_t one = trans ? (size_t)(cols - 1) * ld + rows : (size_t)(rows - 1) * ld + cols;
    return one + (size_t)(count - 1) * (size_t)stride;
}

/* x[0 .. n) times scale, rounded to the network's reduced type, in its buffer `slot` */
static dn_status reduced_copy(dn_cuda *ctx, int slot, const float *x, size_t n, float scale, const void **out)
{
    const size_t bytes = (n ? n : 1) * 2; /* both types are 2 bytes */
    if (ctx->reduced_cap[slot] < bytes) {
        if (ctx->reduced[slot]) cudaFree(ctx->reduced[slot]);
        ctx->reduced[slot] = NULL;
        ctx->reduced_cap[slot] = 0;
        dn_cuda_layout_changed();
        const cudaError_t e = cudaMalloc(&ctx->reduced[slot], bytes);
        if (e != cudaSuccess) {
            ctx->reduced[slot] = NULL;
            return dn_cuda_fail(e, "allocating a product's operand in reduced precision");
        }
        ctx->reduced_cap[slot] = bytes;
    }
    if (ctx->precision == DN_PRECISION_FLOAT16)
        reduce_kernel<__half><<<dn_grid(n), DN_LAUNCH>>>(x, (__half *)ctx->reduced[slot], n, scale);
    else
        reduce_kernel<__nv_bfloat16><<<dn_grid(n), DN_LAUNCH>>>(x, (__nv_bfloat16 *)ctx->reduced[slot], n, scale);
    *out = ctx->reduced[slot];
    return DN_OK;
}

/* The product with both operands rounded to float16/bfloat16 (the gradient operand times the loss scale first),
 * float32 sums on the tensor cores, alpha divided by the scale, C float32. */
static dn_status reduced_gemm(const dn_net *net, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                              int lda, long long sa, const float *B, int ldb, long long sb, float beta, float *C,
                              int ldc, long long sc, int count, int grad)
{
    dn_cuda *ctx = net->cuda;
    const float S = grad ? ctx->loss_scale : 1.f;
    const void *ra = NULL, *rb = NULL;
    dn_status s = reduced_copy(ctx, 0, A, operand_extent(ta, M, K, lda, sa, count), grad == DN_GEMM_GRAD_A ? S : 1.f,
                               &ra);
    if (!s)
        s = reduced_copy(ctx, 1, B, operand_extent(tb, K, N, ldb, sb, count), grad == DN_GEMM_GRAD_B ? S : 1.f, &rb);
    if (s) return s;
    const cudaDataType_t t = ctx->precision == DN_PRECISION_FLOAT16 ? CUDA_R_16F : CUDA_R_16BF;
    const float a = alpha / S;
    const cublasStatus_t st = cublasGemmStridedBatchedEx(
        ctx->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &a, rb, t, ldb, sb, ra, t,
        lda, sa, &beta, C, CUDA_R_32F, ldc, sc, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
        return dn_fail(DN_ERR_STATE, "cuBLAS %s GEMM failed (status %d) for M=%d N=%d K=%d x %d",
                       precision_names[ctx->precision], (int)st, M, N, K, count);
    return DN_OK;
}

/* The backend's begin_update: what the caller or a hook wrote on the host goes to the device (once for the whole
 * update), then, in float16, whether every gradient is finite (*finite), the loss scale moved (halved on a gradient
 * that is not, doubled after LOSS_SCALE_GROWTH_UPDATES finite ones in a row). */
__global__ void nonfinite_kernel(const float *g, size_t n, int *flag)
{
    DN_KERNEL_LOOP(i, n) if (!isfinite(g[i])) *flag = 1; /* every writer writes 1 */
}

dn_status dn_cuda_begin_update(dn_net *net, int *finite)
{
    dn_cuda *ctx = net->cuda;
    *finite = 1;
    dn_status s = dn_cuda_use_device(net);
    if (!s) s = dn_cuda_push_dirty(net);
    if (s || ctx->precision != DN_PRECISION_FLOAT16) return s;
    cudaError_t e = ctx->nonfinite ? cudaSuccess : cudaMalloc(&ctx->nonfinite, sizeof(int));
    if (e == cudaSuccess) e = cudaMemsetAsync(ctx->nonfinite, 0, sizeof(int), ctx->stream);
    if (e == cudaSuccess && ctx->grad_block) /* every gradient in one pass over the block */
        nonfinite_kernel<<<dn_grid(ctx->grad_block_n), DN_LAUNCH>>>(ctx->grad_block, ctx->grad_block_n, ctx->nonfinite);
    int flag = 0;
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(&flag, ctx->nonfinite, sizeof(int), cudaMemcpyDeviceToHost, ctx->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(ctx->stream);
    if (e != cudaSuccess) return dn_cuda_fail(e, "checking the gradients");
    if (flag) {
        *finite = 0;
        ctx->skipped_updates++;
        ctx->good_updates = 0;
        if (ctx->loss_scale > 1.f) ctx->loss_scale *= 0.5f;
        dn_log(net, DN_LOG_INFO, "float16: a gradient is not finite; no update this iteration, loss scale now %g",
               (double)ctx->loss_scale);
    } else if (++ctx->good_updates >= LOSS_SCALE_GROWTH_UPDATES) {
        ctx->good_updates = 0;
        if (ctx->loss_scale < LOSS_SCALE_MAX) ctx->loss_scale *= 2.f;
    }
    return DN_OK;
}

dn_status dn_gpu_gemm(const dn_net *net, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc, int grad)
{
    if (net->cuda->precision)
        return reduced_gemm(net, ta, tb, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, grad);
    /* row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the
     * row-major buffers read as column-major are the transposes */
    const cublasStatus_t st = cublasSgemm(net->cuda->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
    if (st != CUBLAS_STATUS_SUCCESS)
        return dn_fail(DN_ERR_STATE, "cuBLAS sgemm failed (status %d) for M=%d N=%d K=%d", (int)st, M, N, K);
    return DN_OK;
}

dn_status dn_gpu_gemm_strided(const dn_net *net, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                              int lda, long long stride_a, const float *B, int ldb, long long stride_b, float beta,
                              float *C, int ldc, long long stride_c, int count, int grad)
{
    if (net->cuda->precision)
        return reduced_gemm(net, ta, tb, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c,
                            count, grad);
    /* as dn_gpu_gemm: the row-major product read as column-major transposes */
    const cublasStatus_t st = cublasSgemmStridedBatched(
        net->cuda->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb,
        stride_b, A, lda, stride_a, &beta, C, ldc, stride_c, count);
    if (st != CUBLAS_STATUS_SUCCESS)
        return dn_fail(DN_ERR_STATE, "cuBLAS strided batched sgemm failed (status %d) for M=%d N=%d K=%d x %d",
                       (int)st, M, N, K, count);
    return DN_OK;
}

void dn_cuda_release_products(dn_cuda *ctx)
{
    for (int k = 0; k < 2; ++k) {
        if (ctx->reduced[k]) cudaFree(ctx->reduced[k]);
        ctx->reduced[k] = NULL;
        ctx->reduced_cap[k] = 0;
    }
    if (ctx->nonfinite) cudaFree(ctx->nonfinite);
    ctx->nonfinite = NULL;
}
