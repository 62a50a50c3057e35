/*
 * pydarknet.h - the public C interface of the pydarknet core.
 *
 * A network is an opaque handle (dn_net) built layer by layer from fully
 * resolved options, or loaded whole from a model file that `pydarknet export
 * <cfg> <weights> -o model.pdn` wrote (the Python cfg parser resolves
 * darknet's defaults once; the builder here checks the values, infers every
 * layer's shape and allocates). Every function that can fail returns a
 * dn_status; the message of the last failure on the calling thread is
 * dn_last_error(). The library never prints, exits or aborts; log lines go to
 * a callback set per network (dn_net_set_log). No CUDA or BLAS types appear
 * here. Link with the shared or static library (`make lib`, or `python -m
 * pydarknet --cflags --libs` after `pip install`; see README).
 *
 * Detecting objects in a C program:
 *     dn_net *net = NULL;
 *     const dn_detection *dets;
 *     int n;
 *     if (dn_net_load("yolov4-tiny.pdn", &net) != DN_OK) { fprintf(stderr, "%s\n", dn_last_error()); return 1; }
 *     dn_net_set_threads(net, 4);
 *     if (dn_net_detect(net, pixels, size, width, height, 3, 0, 1, -1, .25f, .45f, &dets, &n) == DN_OK)
 *         for (int i = 0; i < n; ++i)
 *             printf("%d %.3f %.1f %.1f %.1f %.1f\n", dets[i].class_id, dets[i].confidence,
 *                    dets[i].x, dets[i].y, dets[i].w, dets[i].h);
 *     dn_net_free(net);
 * (pixels: `size` bytes of 8-bit B,G,R rows; examples/detect.c is a complete program.)
 *
 * Building a network by hand:
 *     dn_net_create(1, 3, 416, 416, &net);
 *     dn_net_add_layer(net, "convolutional");
 *     int filters = 16; dn_net_set_ints(net, "filters", &filters, 1);
 *     ...                              (every option the layer reads)
 *     dn_net_end_layer(net);           (validates, infers the output shape)
 *     ...                              (more layers)
 *     dn_net_finalize(net);            (allocates activations and workspace)
 *     dn_net_forward(net, input, n);   (input: batch*c*h*w floats)
 *     dn_layer_output(net, i, &data, &count);
 *     dn_net_free(net);
 *
 * Tensor layout: NCHW float32, batch-major, as darknet stores it.
 * Gradient convention: a layer's delta holds the true derivative
 * dLoss/d(output) (loss heads keep dLoss/d(their input)); parameter
 * gradients are dLoss/d(param) summed over the images since the last update;
 * the optimizer subtracts. The loss of a batch is the sum over its images.
 *
 * Everything between the DN_CDEF markers is plain C declarations, fed as is to
 * cffi's cdef by the Python build, so the compiler checks both sides agree.
 * Functions declared there are the library's exported symbols (the shared
 * library hides everything else).
 */
#ifndef PYDARKNET_H
#define PYDARKNET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DN_VERSION_MAJOR 0
#define DN_VERSION_MINOR 1

#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif
/* DN_CDEF_BEGIN */
typedef enum dn_status {
    DN_OK = 0,
    DN_ERR_ARG = 1,          /* a bad argument: NULL handle, index out of range, bad option */
    DN_ERR_NOMEM = 2,        /* allocation failed */
    DN_ERR_SHAPE = 3,        /* shapes that do not fit together */
    DN_ERR_FORMAT = 4,       /* malformed data (model file, weights) */
    DN_ERR_IO = 5,           /* a file could not be read or written */
    DN_ERR_UNSUPPORTED = 6,  /* a layer type or option this build does not support */
    DN_ERR_STATE = 7         /* a call out of order (e.g. forward before finalize) */
} dn_status;

typedef enum dn_log_level { DN_LOG_DEBUG = 0, DN_LOG_INFO = 1, DN_LOG_WARN = 2, DN_LOG_ERROR = 3 } dn_log_level;

typedef struct dn_net dn_net;
typedef void (*dn_log_fn)(int level, const char *message, void *user);

/* One detection: a box in the pixels of the image given to the decoder
 * (centre x, y and size w, h), the class it stands for and its confidence
 * (objectness times class probability). */
typedef struct dn_detection {
    float x, y, w, h;
    float objectness;
    float confidence;
    int class_id;
    int batch_index;
} dn_detection;

/* Library */
const char *dn_version(void);
const char *dn_last_error(void);
int dn_blas_available(void);       /* 1 when built against a BLAS */
int dn_num_layer_types(void);      /* the cfg sections the library builds: */
const char *dn_layer_type_name(int i); /* the i-th of them, NULL when out of range */

/* Network lifetime and settings */
dn_status dn_net_create(int batch, int channels, int height, int width, dn_net **out);
void dn_net_free(dn_net *net);
void dn_net_set_log(dn_net *net, dn_log_fn fn, void *user);
dn_status dn_net_set_threads(dn_net *net, int threads);
dn_status dn_net_set_blas(dn_net *net, int use_blas);   /* 0 forces the portable GEMM */
int dn_net_uses_blas(const dn_net *net);
/* Speed paths, each on by default and each selectable off (the plain code
 * stays as the reference the tests compare with). DN_SPEED_THREADS: the
 * network's worker threads split every loop that matters, GEMMs included
 * (OpenBLAS then runs single-threaded inside them); off: loops run in the
 * calling thread and each GEMM uses OpenBLAS's own threads. DN_SPEED_FUSE:
 * inference convolutions fold batch norm into a per-filter scale and bias
 * applied with the activation right after each GEMM tile. DN_SPEED_WINOGRAD:
 * 3x3 stride-1 convolutions in inference with enough output tiles of 4x4
 * (48 with the AVX-512 or AVX2 kernel; none without a packed kernel) use
 * Winograd's F(4x4, 3x3), each layer keeping its transformed filters between
 * passes (4x its weights' memory; made again for filters whose weights changed).
 * DN_SPEED_KERNEL: with the worker threads, convolutions (forward, and the
 * weight and input gradients) run on the project's packed GEMM kernel (im2col
 * folded into its packing) where the CPU has AVX-512 or AVX2 + FMA (see
 * dn_cpu_kernel); off, or elsewhere: OpenBLAS per tile. DN_SPEED_FLUSH (with
 * DN_SPEED_THREADS): inference passes (on x86) treat denormal floats, below 2^-126, as zero
 * (flush-to-zero and denormals-are-zero, as OpenCV's DNN), which spares the
 * processor's slow path for them; darknet keeps them. The speed paths change
 * results only by float32 rounding (and FLUSH below 2^-126); with them on,
 * results do not depend on the thread count.
 * The environment variable PYDARKNET_SPEED, read when a network is created,
 * sets the initial value (a number, e.g. 0 for all plain). */
typedef enum dn_speed_path {
    DN_SPEED_THREADS = 1,
    DN_SPEED_FUSE = 2,
    DN_SPEED_WINOGRAD = 4,
    DN_SPEED_KERNEL = 8,
    DN_SPEED_FLUSH = 16,
    DN_SPEED_ALL = 31
} dn_speed_path;
dn_status dn_net_set_speed(dn_net *net, unsigned paths);
unsigned dn_net_speed(const dn_net *net);
/* The packed GEMM's CPU kernel, one for the whole process: "avx512",
 * "avx2" (AVX2 + FMA) or "none" (OpenBLAS per tile). The best one the CPU
 * runs is chosen when first needed; the environment variable
 * PYDARKNET_CPU_KERNEL (read then) or dn_set_cpu_kernel pick another one the
 * CPU runs, to measure it. The kernels give the same bits for the same
 * GEMM; what differs by float32 rounding is "none", and where a kernel's
 * choices differ (AVX2 takes Winograd from smaller layers). Set it before
 * building networks (setup sizes their workspace for it) and while none runs. */
const char *dn_cpu_kernel(void);
int dn_cpu_kernel_available(const char *name);
dn_status dn_set_cpu_kernel(const char *name);
/* Measured choices. Where the fastest way to run a layer depends on the CPU
 * (today: an inference convolution's algorithm, "winograd", "packed",
 * "blas" or "direct"), the first pass that needs it times the alternatives on the real
 * input and keeps the fastest (the rule's own choice unless another is 5 %
 * faster), so later passes and later processes on the same machine take it
 * without measuring. Choices only change results by float32 rounding, and a
 * pass's output is always that of the kept choice. The choices are kept in a
 * text file: PYDARKNET_TUNING (read when first needed) names it, or "off"
 * (no measuring: the fixed rules); unset, $XDG_CACHE_HOME/pydarknet/cpu-tuning.txt
 * or ~/.cache/pydarknet/cpu-tuning.txt. dn_set_tuning(file) does the same at
 * run time (NULL: the default file; "off"); the choices in memory are
 * dropped and the new file read. dn_tuning_file: the file in use, "" when
 * choices are kept in memory only, NULL when off (valid until the next call).
 * dn_tuning_machine: how the file names this machine. dn_layer_algorithm:
 * the algorithm of a layer's last inference pass on the CPU (NULL when it
 * has none or has not run). */
dn_status dn_set_tuning(const char *file);
const char *dn_tuning_file(void);
const char *dn_tuning_machine(void);
const char *dn_layer_algorithm(const dn_net *net, int layer);
/* Per-layer timing: dn_net_set_profiling(net, 1) zeroes the counters and
 * starts adding up, per layer, the seconds spent in forward and backward
 * passes and the number of forward calls; 0 stops. */
dn_status dn_net_set_profiling(dn_net *net, int on);
dn_status dn_net_layer_times(const dn_net *net, int layer, double *forward_s, double *backward_s, long long *calls);

/* CUDA devices. The default build has no CUDA (PYDARKNET_CUDA=1 at install
 * time builds it); there dn_cuda_device_count gives 0 and DN_ERR_UNSUPPORTED.
 * dn_net_set_device moves a finalized network to CUDA device `gpu` (its
 * parameters and optimizer state go to the device and are kept there; every
 * pass then runs there) or back to the CPU with -1. On a device, the host
 * buffers the inspection calls hand out (outputs, parameters and their
 * optimizer state, deltas) are brought up to date by those calls, and
 * parameters or deltas handed out go back to the device before the next pass,
 * so write them right after getting them. dn_net_sync_to_host brings every
 * output and parameter up to date at once. */
dn_status dn_cuda_device_count(int *count);
dn_status dn_cuda_device_name(int index, char *buf, int size);
dn_status dn_net_set_device(dn_net *net, int gpu);
int dn_net_device(const dn_net *net);   /* the CUDA device, -1 for the CPU */
/* cuDNN, in a build with it (PYDARKNET_CUDA=1 PYDARKNET_CUDNN=1): a network
 * on a device runs its convolutions through cuDNN (float32 arithmetic, no
 * TF32; the fastest algorithm found per layer shape) unless switched off
 * here or by PYDARKNET_CUDNN=0 when it went to the device; off, the
 * im2col + cuBLAS path runs. dn_net_cudnn: 1 while cuDNN is in use. */
dn_status dn_net_set_cudnn(dn_net *net, int on);
int dn_net_cudnn(const dn_net *net);
/* CUDA graphs: a network on a device with graphs on runs each inference
 * pass's layers as one CUDA graph, made on the second pass at a size (the
 * first settles its memory) and launched again while the size, the device
 * memory and the cuDNN switch stand: the same kernels with the same
 * arguments, without their launch cost (what bounds a small batch's
 * latency). Training passes run as before. Off by default; on with
 * PYDARKNET_CUDA_GRAPHS=1 when the network goes to the device, or here (on a
 * device only). dn_net_cuda_graph_launches: the passes a graph ran since the
 * network went to the device. */
dn_status dn_net_set_cuda_graphs(dn_net *net, int on);
int dn_net_cuda_graphs(const dn_net *net);
long long dn_net_cuda_graph_launches(const dn_net *net);
/* Mixed precision on a device (darknet's CUDNN_HALF): with float16 or
 * bfloat16, every matrix product of the convolutions, [connected] and
 * [deformable] layers, forward and backward, runs on the tensor cores with
 * its two operands rounded to that type and float32 sums and results; the
 * weights (the master copy), activations, deltas and every other layer stay
 * float32, and convolutions take the cuBLAS path (not cuDNN). float16 keeps
 * gradients in its range by dynamic loss scaling: the gradient operand of a
 * backward product is multiplied by the scale before it is rounded and the
 * product divided by it after (powers of two: exact); an iteration whose
 * gradients are not all finite updates nothing (the iteration still counts)
 * and halves the scale, and 2000 updates in a row double it (start 65536).
 * bfloat16 has float32's range and needs none (its scale stays 1). Set on a
 * device only; PYDARKNET_CUDA_PRECISION=float16|bfloat16 sets it when the
 * network goes to one. dn_net_loss_scale: the scale and the updates skipped. */
typedef enum dn_precision { DN_PRECISION_FLOAT32 = 0, DN_PRECISION_FLOAT16 = 1, DN_PRECISION_BFLOAT16 = 2 } dn_precision;
dn_status dn_net_set_gpu_precision(dn_net *net, int precision);
int dn_net_gpu_precision(const dn_net *net);
dn_status dn_net_set_loss_scale(dn_net *net, float scale);   /* a power of two, 1 .. 2^24 */
dn_status dn_net_loss_scale(const dn_net *net, float *scale, long long *skipped);
dn_status dn_net_sync_to_host(dn_net *net);

/* Building: one layer at a time, options fully resolved by the caller. */
dn_status dn_net_add_layer(dn_net *net, const char *type);
dn_status dn_net_set_ints(dn_net *net, const char *key, const int *values, int count);
dn_status dn_net_set_floats(dn_net *net, const char *key, const float *values, int count);
dn_status dn_net_set_string(dn_net *net, const char *key, const char *value);
dn_status dn_net_end_layer(dn_net *net);
dn_status dn_net_finalize(dn_net *net);
dn_status dn_net_resize(dn_net *net, int batch, int height, int width);

/* Inspection */
int dn_net_num_layers(const dn_net *net);
dn_status dn_net_input_shape(const dn_net *net, int *batch, int *channels, int *height, int *width);
dn_status dn_layer_type(const dn_net *net, int layer, const char **type);
dn_status dn_layer_shape(const dn_net *net, int layer, int *channels, int *height, int *width);
dn_status dn_layer_output(const dn_net *net, int layer, const float **data, size_t *count);
int dn_layer_num_params(const dn_net *net, int layer);
dn_status dn_layer_param(dn_net *net, int layer, int index, const char **name, float **data, size_t *count);
dn_status dn_net_workspace_size(const dn_net *net, size_t *bytes);

/* Running */
dn_status dn_net_forward(dn_net *net, const float *input, size_t count);

/* Training. The network's batch is the mini-batch darknet runs at once
 * (batch / subdivisions). Options ([net] section, resolved: learning_rate,
 * momentum, decay, policy, burn_in, power, steps, scales, step, scale, gamma,
 * max_batches, sgdr_cycle, sgdr_mult, learning_rate_min, adam, B1, B2, eps)
 * are set with the dn_net_set_train_* calls before dn_net_enable_training.
 * Truths: `truth_count` floats for the images given, the same number per image
 * (detection: rows of x, y, w, h, class, zero rows for padding; classifiers:
 * one value per class). */
dn_status dn_net_set_train_ints(dn_net *net, const char *key, const int *values, int count);
dn_status dn_net_set_train_floats(dn_net *net, const char *key, const float *values, int count);
dn_status dn_net_set_train_string(dn_net *net, const char *key, const char *value);
dn_status dn_net_enable_training(dn_net *net);
/* darknet's initial values for training from scratch (uniform weights in
 * +-sqrt(2/fan_in), zero biases), drawn from `seed`. */
dn_status dn_net_init_params(dn_net *net, unsigned long long seed);
/* One mini-batch forward pass in training mode; losses computed from the truths. */
dn_status dn_net_forward_train(dn_net *net, const float *input, size_t count, const float *truth, size_t truth_count);
double dn_net_loss(const dn_net *net);   /* summed loss of the last training forward pass */
/* Backward pass from the deltas the loss heads (or the caller, through
 * dn_layer_delta) set; adds into the parameter gradients. */
dn_status dn_net_backward(dn_net *net);
/* The optimizer step with the gradients accumulated since the last update
 * (over `images` images), then the gradients are zeroed and the iteration
 * advances. */
dn_status dn_net_update(dn_net *net);
/* The first of `images` images (per_image floats each, one after the other)
 * with a NaN or infinite value, or -1 when all are finite; the network's
 * worker threads share the scan. */
long long dn_net_first_nonfinite(const dn_net *net, const float *x, size_t images, size_t per_image);
/* A full batch: count / (c*h*w) images, a multiple of the network's batch,
 * run as mini-batches (darknet's subdivisions), gradients accumulated, then
 * one update. *loss: the loss per image. A non-finite loss stops before the
 * update (the weights are left as they were) with DN_ERR_STATE. */
dn_status dn_net_train_batch(dn_net *net, const float *input, size_t count, const float *truth, size_t truth_count,
                             float *loss);
/* Data-parallel training: a hook dn_net_train_batch calls between the last
 * backward pass and the update; it may rewrite the gradients (an all-reduce
 * over processes, in place in dn_net_gradient_block or through
 * dn_net_gradients) and *images, the images they were summed over (the
 * update divides by it; the images counted as seen follow). NULL removes it. */
typedef dn_status (*dn_gradient_hook)(dn_net *net, void *user, unsigned long long *images);
dn_status dn_net_set_gradient_hook(dn_net *net, dn_gradient_hook hook, void *user);
/* Synchronized batch norm: a hook that sums `count` doubles over the
 * processes in place (an all-reduce), which training passes call for the
 * batch statistics of every [convolutional] layer with batch norm and
 * sync_bn (the layer's sync_bn=1, or [net] sync_bn=1 where the layer leaves
 * it unset): forward the per-channel sums (and the value count), then the
 * squared deviations from the common mean; backward the two per-channel
 * gradient sums. Without a hook sync_bn changes nothing. NULL removes it. A
 * network on a CUDA device refuses sync_bn in training (not yet there). */
typedef dn_status (*dn_reduce_hook)(dn_net *net, void *user, double *values, size_t count);
dn_status dn_net_set_reduce_hook(dn_net *net, dn_reduce_hook hook, void *user);
/* Every parameter gradient, in layer and parameter order, as one run of
 * floats: the total count, and a copy out (to_buffer = 1) or back in (0) of
 * `count` floats (which must be the total). On a device every parameter's
 * host copy is brought up to date first (and goes back before the next pass). */
size_t dn_net_gradient_count(const dn_net *net);
dn_status dn_net_gradients(dn_net *net, float *buffer, size_t count, int to_buffer);
/* That run itself: with training enabled, the host gradients are one block
 * of dn_net_gradient_count floats in that order (each parameter's gradient a
 * part of it), valid while the network lives; *count gets its length. The
 * block holds the current values on the CPU, and on a device inside the
 * bucket and gradient hooks of dn_net_train_batch. */
dn_status dn_net_gradient_block(dn_net *net, float **block, size_t *count);
/* Data-parallel training with the all-reduce overlapping the backward pass:
 * a hook dn_net_train_batch calls with each range [offset, offset + count) of
 * the gradient block whose values are final for this update, as soon as they
 * are: during the last mini-batch's backward pass, when at least
 * `bucket_floats` more have become final (the layers' backward passes run
 * last layer first, so the ranges come highest offset first), and once after
 * it for the rest; together the ranges cover the block once per update, and
 * the gradient hook follows. The hook may start a non-blocking all-reduce of
 * the range in place, which the gradient hook waits for; it must not change
 * the range before then (earlier layers' backward passes still run).
 * bucket_floats 0, or a network on a device (whose gradients come to the host
 * after the backward pass): one range, the whole block, after the backward
 * pass. NULL removes it. */
typedef dn_status (*dn_bucket_hook)(dn_net *net, void *user, size_t offset, size_t count);
dn_status dn_net_set_bucket_hook(dn_net *net, dn_bucket_hook hook, void *user, size_t bucket_floats);
dn_status dn_net_learning_rate(const dn_net *net, long long iteration, float *rate);
long long dn_net_iteration(const dn_net *net);
dn_status dn_net_set_iteration(dn_net *net, long long iteration, unsigned long long seen);
unsigned long long dn_net_seen(const dn_net *net);
dn_status dn_net_seed(dn_net *net, unsigned long long seed);
unsigned long long dn_net_rng_state(const dn_net *net);
dn_status dn_layer_delta(dn_net *net, int layer, float **data, size_t *count);
dn_status dn_net_input_delta(dn_net *net, float **data, size_t *count);
/* The gradient and optimizer buffers of a parameter (NULL before training is
 * enabled, and for layers that are never updated: frozen by a later
 * stopbackward=1, or up to a train_only_bn=1 layer). */
dn_status dn_layer_param_state(dn_net *net, int layer, int index, float **grad, float **m, float **v);

/* Images: 8-bit interleaved pixels (rows of width*channels bytes, `stride`
 * bytes apart; channels 1 or 3; bgr=1 for OpenCV's order) to the network's
 * planar RGB float input for batch entry `batch_index` (one grey plane for a
 * network of one channel, colour pixels made grey as OpenCV's BGR2GRAY
 * does), resized as darknet does: plain stretch (letterbox=0) or
 * aspect-preserving letterbox on grey. */
dn_status dn_net_set_input_image(dn_net *net, int batch_index, const uint8_t *pixels, int width, int height,
                                 int channels, int stride, int bgr, int letterbox);
/* As dn_net_set_input_image, prepared as darknet's classifier predict and
 * valid prepare an image: resized (darknet's bilinear) so its shorter side is
 * the network width, the other side in proportion (rounded down), then the
 * centred width x height crop (edge pixels repeated where the crop is larger). */
dn_status dn_net_set_input_image_crop(dn_net *net, int batch_index, const uint8_t *pixels, int width, int height,
                                      int channels, int stride, int bgr);
dn_status dn_net_forward_input(dn_net *net);

/* Detections from every [yolo] and [region] head after a forward pass, boxes
 * mapped back to an image of img_w x img_h (letterbox as used for the input),
 * non-maximum suppression per class with IoU above `nms` (0 disables it).
 * Writes at most `capacity` detections, sorted by confidence, and the number
 * found (which may exceed capacity) to *found. */
dn_status dn_net_detections(dn_net *net, int batch_index, int img_w, int img_h, float thresh, float nms,
                            int letterbox, dn_detection *out, int capacity, int *found);
/* Model files (written by `pydarknet export`; format in src_c/core/model.c):
 * the resolved layers, the [net] options, class names and every parameter
 * tensor. The network is rebuilt through the builder above, finalized for
 * batch 1 at the stored input size, and ready to run (one thread; see
 * dn_net_set_threads). A file that is malformed, truncated, corrupt or made
 * for another build fails with DN_ERR_FORMAT (DN_ERR_IO when it cannot be
 * read), the message naming the file and byte offset, and *out stays NULL.
 * dn_net_load_memory reads the same bytes from memory (the caller keeps them). */
dn_status dn_net_load(const char *path, dn_net **out);
dn_status dn_net_load_memory(const void *data, size_t size, dn_net **out);
/* Class names stored in the model file: how many (0 for none, or a network
 * not loaded from a file), and the name of one class. */
int dn_net_num_names(const dn_net *net);
dn_status dn_net_name(const dn_net *net, int class_id, const char **name);

/* Pixels in, detections out, in one call: an image of width x height 8-bit
 * pixels with 1 or 3 interleaved channels (bgr=1: B,G,R order as OpenCV
 * keeps it, 0: R,G,B), rows `stride` bytes apart (0: width*channels), `size`
 * bytes in all, is resized into the network input (letterbox < 0: as the
 * model's [net] letter_box says; 0: stretched; 1: letterboxed), the network
 * runs, and its [yolo]/[region] heads are decoded as dn_net_detections does
 * (confidence above `thresh`, per-class NMS at IoU `nms`, boxes in image
 * pixels, sorted by confidence). *dets points to the *count detections; the
 * network owns them until its next dn_net_detect, dn_net_detections or
 * dn_net_free. */
dn_status dn_net_detect(dn_net *net, const uint8_t *pixels, size_t size, int width, int height, int channels,
                        int stride, int bgr, int letterbox, float thresh, float nms, const dn_detection **dets,
                        int *count);
/* DN_CDEF_END */
#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif /* PYDARKNET_H */
