/* device.c - the public calls that choose where a network runs: CUDA device
 * queries and moving a network between the CPU and a device. The work is in
 * core/cuda.cu; a build without CUDA answers through cuda.h's stubs. */
#include "layer.h"
#include "cuda.h"
#include "backend.h"

#include <math.h>

dn_status dn_cuda_device_count(int *count)
{
    if (!count) return dn_fail(DN_ERR_ARG, "count pointer is NULL");
    return dn_gpu_device_count(count);
}

dn_status dn_cuda_device_name(int index, char *buf, int size)
{
    if (!buf || size < 1) return dn_fail(DN_ERR_ARG, "name buffer is NULL or empty");
    buf[0] = 0;
    return dn_gpu_device_name(index, buf, size);
}

dn_status dn_net_set_device(dn_net *net, int gpu)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    if (gpu < -1) return dn_fail(DN_ERR_ARG, "device %d: give a CUDA device index, or -1 for the CPU", gpu);
    if (gpu == dn_gpu_device(net)) return DN_OK;
    dn_gpu_close(net);
    return gpu < 0 ? DN_OK : dn_gpu_open(net, gpu);
}

int dn_net_device(const dn_net *net) { return net ? dn_gpu_device(net) : -1; }

dn_status dn_net_set_cudnn(dn_net *net, int on)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    return dn_gpu_set_cudnn(net, on);
}

int dn_net_cudnn(const dn_net *net) { return net ? dn_gpu_cudnn_on(net) : 0; }

dn_status dn_net_set_cuda_graphs(dn_net *net, int on)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    return dn_gpu_set_graphs(net, on);
}

int dn_net_cuda_graphs(const dn_net *net) { return net ? dn_gpu_graphs_on(net) : 0; }

long long dn_net_cuda_graph_launches(const dn_net *net) { return net ? dn_gpu_graph_launches(net) : 0; }

dn_status dn_net_set_gpu_precision(dn_net *net, int precision)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (precision < DN_PRECISION_FLOAT32 || precision > DN_PRECISION_BFLOAT16)
        return dn_fail(DN_ERR_ARG, "precision %d: give 0 (float32), 1 (float16) or 2 (bfloat16)", precision);
    return dn_gpu_set_precision(net, precision);
}

int dn_net_gpu_precision(const dn_net *net) { return net ? dn_gpu_precision(net) : 0; }

dn_status dn_net_set_loss_scale(dn_net *net, float scale)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    int e;
    if (!(scale >= 1.f && scale <= 16777216.f) || frexpf(scale, &e) != 0.5f)
        return dn_fail(DN_ERR_ARG, "loss scale %g: give a power of two from 1 to 2^24", (double)scale);
    return dn_gpu_set_loss_scale(net, scale);
}

dn_status dn_net_loss_scale(const dn_net *net, float *scale, long long *skipped)
{
    if (!net || !scale || !skipped) return dn_fail(DN_ERR_ARG, "network handle or result pointer is NULL");
    return dn_gpu_loss_scale(net, scale, skipped);
}

dn_status dn_net_sync_to_host(dn_net *net)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    return dn_net_to_host(net, 1);
}
