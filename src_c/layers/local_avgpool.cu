/* local_avgpool.cu - [local_avgpool] on the device, as local_avgpool.c:
 * forward one thread per output, the mean of its window's pixels inside the
 * image (the window starts padding/2 before it; ops/pool.c's dn_pool2d
 * arithmetic); backward one thread per input pixel, gathering delta / n_o
 * from every output o whose window covers it (n_o: the window's pixels
 * inside the image), so no two threads write the same place. */
#include "cuda.h"
#include "../ops/ops.h"

typedef struct {
    int h, w, out_h, out_w, size, sy, sx, off;
} pool_shape;

__global__ static void avg_kernel(const float *in, size_t n, pool_shape p, float *out)
{
    DN_KERNEL_LOOP(o, n) {
        const int j = (int)(o % p.out_w), i = (int)(o / p.out_w % p.out_h);
        const float *src = in + o / ((size_t)p.out_w * p.out_h) * p.h * p.w;
        const int y0 = p.off + i * p.sy, x0 = p.off + j * p.sx;
        float sum = 0.f;
        int count = 0;
        for (int a = 0; a < p.size; ++a) {
            const int y = y0 + a;
            if (y < 0 || y >= p.h) continue;
            for (int b = 0; b < p.size; ++b) {
                const int x = x0 + b;
                if (x < 0 || x >= p.w) continue;
                sum += src[(size_t)y * p.w + x];
                ++count;
            }
        }
        out[o] = count ? sum / count : 0.f;
    }
}

/* the outputs along one axis whose windows cover pixel v: [*lo, *hi] */
static __device__ void covering(int v, int off, int stride, int size, int out_n, int *lo, int *hi)
{
    const int t = v - off - size + 1; /* v - off >= 0: off <= 0 */
    *lo = t <= 0 ? 0 : (t + stride - 1) / stride;
    *hi = (v - off) / stride;
    if (*hi > out_n - 1) *hi = out_n - 1;
}

/* the pixels of window start v0 inside [0, n) */
static __device__ int inside(int v0, int size, int n)
{
    const int a = v0 < 0 ? 0 : v0, e = v0 + size > n ? n : v0 + size;
    return e > a ? e - a : 0;
}

__global__ static void avg_back_kernel(const float *delta, size_t n, pool_shape p, float *in_delta)
{
    DN_KERNEL_LOOP(t, n) {
        const int x = (int)(t % p.w), y = (int)(t / p.w % p.h);
        const float *d = delta + t / ((size_t)p.w * p.h) * p.out_h * p.out_w;
        int i0, i1, j0, j1;
        covering(y, p.off, p.sy, p.size, p.out_h, &i0, &i1);
        covering(x, p.off, p.sx, p.size, p.out_w, &j0, &j1);
        float sum = 0.f;
        for (int i = i0; i <= i1; ++i)
            for (int j = j0; j <= j1; ++j) {
                const int count = inside(p.off + i * p.sy, p.size, p.h) * inside(p.off + j * p.sx, p.size, p.w);
                sum += d[(size_t)i * p.out_w + j] / (float)count;
            }
        in_delta[t] += sum;
    }
}

static dn_status read_shape(const dn_layer *l, pool_shape *p)
{
    int padding;
    dn_status s = dn_pool_window(l, &p->size, &p->sx, &p->sy, &padding);
    if (s) return s;
    p->off = -padding / 2;
    p->h = l->h;
    p->w = l->w;
    p->out_h = l->out_h;
    p->out_w = l->out_w;
    return DN_OK;
}

static dn_status local_avgpool_forward_gpu(dn_layer *l, dn_net *net)
{
    pool_shape p;
    dn_status s = read_shape(l, &p);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    avg_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), n, p, l->output_gpu);
    return DN_OK;
}

static dn_status local_avgpool_backward_gpu(dn_layer *l, dn_net *net)
{
    pool_shape p;
    dn_status s = read_shape(l, &p);
    if (s) return s;
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->inputs;
    avg_back_kernel<<<dn_grid(n), DN_LAUNCH>>>(l->delta_gpu, n, p, d);
    return DN_OK;
}

extern "C" {
dn_status dn_local_avgpool_forward_gpu(dn_layer *l, dn_net *net) { return local_avgpool_forward_gpu(l, net); }
dn_status dn_local_avgpool_backward_gpu(dn_layer *l, dn_net *net) { return local_avgpool_backward_gpu(l, net); }
}
