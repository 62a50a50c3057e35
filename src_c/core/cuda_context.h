/* cuda_context.h - what the CUDA backend's own files share (core/cuda.cu:
 * the context, memory, copies and passes; core/cuda_gemm.cu: the matrix
 * products in float32 or mixed precision). C++ (nvcc) only: the layers'
 * .cu files see core/cuda.h alone. */
#ifndef DN_CUDA_CONTEXT_H
#define DN_CUDA_CONTEXT_H

#include "cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#ifdef DN_CUDNN
#include <cudnn.h>
#endif

struct dn_cuda {
    int device;
    int sync_each;            /* synchronize after every layer (PYDARKNET_CUDA_SYNC) */
    cudaStream_t stream;      /* the network's: every pass's work, in order */
    cublasHandle_t blas;
    float *input, *input_delta; /* input: the buffer of the last pass, one of inputs[] */
    size_t input_n;
    /* The input's device buffers: [0], and for training passes [1] too, taken in turn, so that a pass's input
     * goes up on the upload stream while the device still runs the pass before, which reads the other one.
     * Per buffer: `released` is recorded on the network's stream when a later pass begins (every pass that read
     * the buffer is queued before it), the upload waits for it; `uploaded` is recorded on the upload stream after
     * the copy, the pass waits for it, and so does the host before it writes the buffer's staging again. */
    float *inputs[2];
    int input_k;
    cudaStream_t upload;
    cudaEvent_t uploaded[2], released[2];
    int upload_pending[2];
    /* the input goes through page-locked staging (a DMA at full speed; a pageable copy is staged by the driver
     * in small pieces), one per input buffer: the caller's array is copied into it, then copied to the device
     * asynchronously. NULL: plain copies (page-locked memory refused). */
    float *staging[2];
    size_t staging_n[2];
    /* The inference layers as a CUDA graph (PYDARKNET_CUDA_GRAPHS=1; run_layers): made for one memory layout
     * (the allocation count, graph_layout); warm_layout: the layout of the last eager inference pass (a graph is
     * captured on the pass after); no_graph_layout: a layout whose pass could not be captured. */
    /* Mixed precision (dn_net_set_gpu_precision): the matrix products' operands rounded to float16 or bfloat16
     * into `reduced` (grown as needed); float16's loss scale, the updates in a row since it last changed, the
     * updates skipped; `nonfinite`: a device flag set by a gradient that is not finite. */
    int precision;
    float loss_scale;
    long long good_updates, skipped_updates;
    void *reduced[2];
    size_t reduced_cap[2];
    int *nonfinite;
    int graphs;
    long long graph_launches;
    cudaGraphExec_t graph;
    unsigned long long graph_layout, warm_layout, no_graph_layout;
    float *workspace;
    size_t workspace_n;
    /* The parameters' gradients in one device block in the host block's order (net->grad_arena; each
     * p->grad_gpu a slice at p->grad's offset, made with the block when training is on), so that they cross to the host and back as one copy each way.
     * grads_on_host: the host block was brought up to date and handed out (the gradient hooks may rewrite
     * it); it goes back before the next device work with them. */
    float *grad_block;
    size_t grad_block_n;
    int grads_on_host;
    double *loss_host;        /* the device losses' values on the host (dn_gpu_loss_total), grown as needed */
    size_t loss_host_n;
    int *delta_dirty;         /* per layer, and [nlayers] for the input: the host delta was handed out */
    /* host buffers registered as page-locked (cudaHostRegister): those that cross to the host in every
     * training pass (a loss head's input, output and delta, a host-pass layer's and its sources'), so that
     * their copies run as DMA at full speed instead of through the driver's small pageable staging */
    void **pinned;
    int npinned, pinned_cap;
    /* per layer: a plan (dn_gpu_plan) and how to release it */
    void **plans;
    void (**plan_release)(void *);
    int nplans;
#ifdef DN_CUDNN
    cudnnHandle_t dnn;        /* NULL: cuDNN could not start */
    int use_dnn;
#endif
};

/* cuda.cu */
dn_status dn_cuda_fail(cudaError_t e, const char *what);   /* DN_ERR_NOMEM or DN_ERR_STATE naming `what` */
dn_status dn_cuda_use_device(const dn_net *net);            /* the network's device and stream the thread's */
/* Counts every device allocation, plan release and switch that moves what a CUDA graph holds. */
void dn_cuda_layout_changed(void);
void dn_cuda_free_plans(dn_cuda *ctx);                     /* every layer's plan released */
dn_status dn_cuda_push_dirty(dn_net *net);                  /* what the caller was handed goes back to the device */

/* cuda_gemm.cu */
dn_status dn_cuda_precision_from_environment(dn_net *net);  /* PYDARKNET_CUDA_PRECISION, when the network goes there */
dn_status dn_cuda_begin_update(dn_net *net, int *finite);   /* the backend's begin_update */
void dn_cuda_release_products(dn_cuda *ctx);                /* the products' buffers freed */

#endif /* DN_CUDA_CONTEXT_H */
