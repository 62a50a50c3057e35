/* conv_backward.c - a convolution's weight and input gradients on the packed
 * GEMM kernel (gemm_packed.c), split over the worker threads.
 *
 * Weight gradient, per group: dW[M x K] += sum over images b of
 * d_b[M x N] * cols_b^T[N x K]. The kernel reads d's rows in place (A) and
 * takes B = cols^T in panels of 32 columns of dW (32 rows of the im2col
 * matrix, unrolled for a block of DN_KC output positions and transposed).
 * Tasks own panels of 32 columns of dW and run through the images and
 * position blocks in order. A layer with few panels also cuts that run into
 * a fixed number of chunks whose partial sums are added in chunk order.
 *
 * Input gradient: cols_delta[K x N] = W^T[K x M] * d[M x N], then col2im.
 * Tasks own (image, group, a few input channels): the rows of W^T for those
 * channels are packed once per task, d is packed per block of positions, and
 * each block of cols_delta goes straight back onto the input's delta
 * (dn_col2im_range) while in cache. Different tasks touch different input
 * channels, so they never write the same value. 1x1 stride-1 convolutions
 * are a plain GEMM into the input's delta.
 *
 * Every sum runs in an order fixed by the shape alone. */
#include "ops.h"

#include <string.h>

#define NB DN_KC /* output positions per block */
#define WG_COLS (4 * DN_NR) /* columns of dW per weight-gradient task */

typedef struct {
    int M, N, K, cg, ss, direct, kgroups, nchunks, nblocks, chan_chunk, chan_tasks;
} grad_plan;

static grad_plan make_grad_plan(const dn_conv_desc *d)
{
    grad_plan p;
    p.M = d->filters / d->groups;
    p.N = d->out_h * d->out_w;
    p.cg = d->c / d->groups;
    p.ss = d->size * d->size;
    p.K = p.cg * p.ss;
    p.direct = d->size == 1 && d->stride_x == 1 && d->stride_y == 1 && d->pad == 0;
    p.kgroups = (p.K + WG_COLS - 1) / WG_COLS;
    p.nblocks = (p.N + NB - 1) / NB;
    /* at least 16 weight-gradient tasks where the work allows */
    const int blocks = d->batch * p.nblocks, groups = d->groups * p.kgroups;
    p.nchunks = 1;
    while (groups * p.nchunks < 16 && p.nchunks * 2 <= blocks) p.nchunks *= 2;
    p.chan_chunk = p.cg >= 64 ? 8 : (p.cg >= 8 ? p.cg / 8 : 1);
    p.chan_tasks = (p.cg + p.chan_chunk - 1) / p.chan_chunk;
    return p;
}

static size_t fbytes(size_t n) { return (n * sizeof(float) + 63) / 64 * 64; }

void dn_conv_backward_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker)
{
    const grad_plan p = make_grad_plan(d);
    /* weight gradient: rows [WG_COLS][NB] and their transposed panels; every task's sums */
    size_t w = 2 * fbytes((size_t)WG_COLS * NB);
    *shared = fbytes((size_t)d->groups * p.kgroups * p.nchunks * p.M * WG_COLS);
    /* input gradient: packed W^T rows, packed d block, the cols_delta block */
    size_t in;
    if (p.direct) {
        int mt, nt;
        dn_packed_gemm_plan(p.cg, p.N, &mt, &nt);
        in = dn_packed_gemm_scratch(nt);
    } else {
        const size_t rows = (size_t)p.chan_chunk * p.ss, rp = (rows + DN_MR - 1) / DN_MR * DN_MR;
        in = fbytes(rp * p.M) + fbytes((size_t)p.M * NB) + fbytes(rp * NB);
    }
    *per_worker = w > in ? w : in;
}

/* ---- weight gradient ---- */

typedef struct {
    const dn_net *net;
    const dn_layer *l;
    const dn_conv_desc *d;
    grad_plan p;
    const float *input, *delta;
    float *wgrad, *partial;
} wgrad_job;

/* B panels [nb][32] for columns [k0, k0 + 32*np) of dW from image im's
 * im2col rows at positions [n0, n0 + nb): panel q at bp + q*NB*32 */
static void pack_cols_t(const wgrad_job *j, const float *im, int k0, int n0, int nb, float *rows, float *bp)
{
    const dn_conv_desc *d = j->d;
    const grad_plan *p = &j->p;
    const size_t plane = (size_t)d->h * d->w;
    const int kn = p->K - k0 < WG_COLS ? p->K - k0 : WG_COLS;
    for (int r = 0; r < kn; ++r) {
        const int k = k0 + r;
        float *dst = rows + (size_t)r * NB;
        if (p->direct) {
            memcpy(dst, im + (size_t)k * plane + n0, (size_t)nb * sizeof(float));
            continue;
        }
        const int c = k / p->ss, ky = k % p->ss / d->size, kx = k % d->size;
        dn_im2col_row(im + (size_t)c * plane, d->h, d->w, ky, kx, d->pad, d->pad, d->stride_y, d->stride_x,
                      d->dilation, d->dilation, d->out_w, n0, n0 + nb, dst);
    }
    const int panels = (kn + DN_NR - 1) / DN_NR;
    for (int r = kn; r < panels * DN_NR; ++r) memset(rows + (size_t)r * NB, 0, (size_t)nb * sizeof(float));
    for (int q = 0; q < panels; ++q) dn_transpose_panel(rows + (size_t)q * DN_NR * NB, NB, nb, bp + (size_t)q * NB * DN_NR);
}

static void wgrad_task(void *ctx, int task, int worker)
{
    const wgrad_job *j = ctx;
    const dn_conv_desc *d = j->d;
    const grad_plan *p = &j->p;
    const int chunk = task % p->nchunks, kg = task / p->nchunks % p->kgroups, g = task / p->nchunks / p->kgroups;
    const int k0 = kg * WG_COLS, kn = p->K - k0 < WG_COLS ? p->K - k0 : WG_COLS;
    const int panels = (kn + DN_NR - 1) / DN_NR;
    float *rows = dn_scratch(j->net, j->l, worker);
    float *bp = rows + (size_t)WG_COLS * NB;
    const int blocks = d->batch * p->nblocks;
    const int j0 = (int)((long long)blocks * chunk / p->nchunks), j1 = (int)((long long)blocks * (chunk + 1) / p->nchunks);
    float *tile = j->partial + (size_t)task * p->M * WG_COLS; /* [M][WG_COLS], this task's sums */
    if (j0 >= j1) memset(tile, 0, (size_t)p->M * WG_COLS * sizeof(float));
    for (int blk = j0; blk < j1; ++blk) {
        const int b = blk / p->nblocks, n0 = blk % p->nblocks * NB, nb = p->N - n0 < NB ? p->N - n0 : NB;
        const float *im = j->input + ((size_t)b * d->c + (size_t)g * p->cg) * d->h * d->w;
        const float *dl = j->delta + ((size_t)b * d->filters + (size_t)g * p->M) * p->N;
        pack_cols_t(j, im, k0, n0, nb, rows, bp);
        for (int m0 = 0; m0 < p->M; m0 += DN_MR) {
            const int mr = p->M - m0 < DN_MR ? p->M - m0 : DN_MR;
            for (int q = 0; q < panels; ++q) {
                const int nr = kn - q * DN_NR < DN_NR ? kn - q * DN_NR : DN_NR;
                dn_kernel_rows(nb, dl + (size_t)m0 * p->N + n0, (size_t)p->N, bp + (size_t)q * NB * DN_NR,
                               tile + (size_t)m0 * WG_COLS + q * DN_NR, WG_COLS, mr, nr, blk > j0, NULL, 0);
            }
        }
    }
}

/* the tasks' sums added into dW in chunk order, one (group, column group) per task */
static void wgrad_reduce_task(void *ctx, int task, int worker)
{
    (void)worker;
    const wgrad_job *j = ctx;
    const grad_plan *p = &j->p;
    const int kg = task % p->kgroups, g = task / p->kgroups;
    const int k0 = kg * WG_COLS, kn = p->K - k0 < WG_COLS ? p->K - k0 : WG_COLS;
    float *w = j->wgrad + (size_t)g * p->M * p->K + k0;
    const float *part = j->partial + (size_t)task * p->nchunks * p->M * WG_COLS;
    for (int m = 0; m < p->M; ++m)
        for (int r = 0; r < kn; ++r) {
            float s = 0.f;
            for (int ch = 0; ch < p->nchunks; ++ch) s += part[((size_t)ch * p->M + m) * WG_COLS + r];
            w[(size_t)m * p->K + r] += s;
        }
}

void dn_conv_weight_grad(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                         const float *delta, float *wgrad)
{
    wgrad_job j = {net, l, d, make_grad_plan(d), input, delta, wgrad, dn_scratch(net, l, -1)};
    dn_parallel(net, d->groups * j.p.kgroups * j.p.nchunks, wgrad_task, &j);
    dn_parallel(net, d->groups * j.p.kgroups, wgrad_reduce_task, &j);
}

/* ---- input gradient ---- */

typedef struct {
    const dn_net *net;
    const dn_layer *l;
    const dn_conv_desc *d;
    grad_plan p;
    const float *delta;
    float *in_delta;
} igrad_job;

static void igrad_task(void *ctx, int task, int worker)
{
    const igrad_job *j = ctx;
    const dn_conv_desc *d = j->d;
    const grad_plan *p = &j->p;
    const int ct = task % p->chan_tasks, g = task / p->chan_tasks % d->groups, b = task / p->chan_tasks / d->groups;
    const int c0 = ct * p->chan_chunk, c1 = c0 + p->chan_chunk < p->cg ? c0 + p->chan_chunk : p->cg;
    const int r0 = c0 * p->ss, rows = (c1 - c0) * p->ss, rpanels = (rows + DN_MR - 1) / DN_MR;
    float *ap = dn_scratch(j->net, j->l, worker);
    float *bp = ap + fbytes((size_t)((p->chan_chunk * p->ss + DN_MR - 1) / DN_MR * DN_MR) * p->M) / sizeof(float);
    float *cd = bp + fbytes((size_t)p->M * NB) / sizeof(float);
    const float *w = d->weights + (size_t)g * p->M * p->K;
    /* W^T rows r0.. : A[i][m] = W[m][r0 + i], panels [m][8] over all M */
    for (int q = 0; q < rpanels; ++q) {
        const int mr = rows - q * DN_MR < DN_MR ? rows - q * DN_MR : DN_MR;
        dn_pack_a(w + r0 + q * DN_MR, 1, p->K, mr, p->M, ap + (size_t)q * p->M * DN_MR);
    }
    const float *dl = j->delta + ((size_t)b * d->filters + (size_t)g * p->M) * p->N;
    float *im = j->in_delta + ((size_t)b * d->c + (size_t)g * p->cg + c0) * d->h * d->w;
    for (int n0 = 0; n0 < p->N; n0 += NB) {
        const int nb = p->N - n0 < NB ? p->N - n0 : NB;
        const int cols = (nb + DN_NR - 1) / DN_NR * DN_NR;
        for (int m0 = 0; m0 < p->M; m0 += DN_KC) {
            const int mc = p->M - m0 < DN_KC ? p->M - m0 : DN_KC;
            dn_pack_b(dl + (size_t)m0 * p->N + n0, 0, p->N, mc, nb, bp + (size_t)m0 * cols);
        }
        for (int q = 0; q < rpanels; ++q) {
            const int mr = rows - q * DN_MR < DN_MR ? rows - q * DN_MR : DN_MR;
            for (int t = 0; t * DN_NR < nb; ++t) {
                const int nr = nb - t * DN_NR < DN_NR ? nb - t * DN_NR : DN_NR;
                for (int m0 = 0; m0 < p->M; m0 += DN_KC) {
                    const int mc = p->M - m0 < DN_KC ? p->M - m0 : DN_KC;
                    dn_kernel(mc, ap + ((size_t)q * p->M + m0) * DN_MR, bp + (size_t)m0 * cols + (size_t)t * mc * DN_NR,
                              cd + (size_t)q * DN_MR * nb + t * DN_NR, (size_t)nb, mr, nr, m0 > 0, NULL, 0);
                }
            }
        }
        dn_col2im_range(cd, c1 - c0, d->h, d->w, d->size, d->size, d->pad, d->pad, d->stride_y, d->stride_x,
                        d->dilation, d->dilation, d->out_w, n0, n0 + nb, im);
    }
}

void dn_conv_input_grad(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *delta,
                        float *in_delta)
{
    const grad_plan p = make_grad_plan(d);
    if (p.direct) {
        for (int b = 0; b < d->batch; ++b)
            for (int g = 0; g < d->groups; ++g)
                dn_packed_gemm(net, l, 1, 0, p.cg, p.N, p.M, d->weights + (size_t)g * p.M * p.K, p.K,
                               delta + ((size_t)b * d->filters + (size_t)g * p.M) * p.N, p.N, 1,
                               in_delta + ((size_t)b * d->c + (size_t)g * p.cg) * p.N, p.N);
        return;
    }
    igrad_job j = {net, l, d, p, delta, in_delta};
    dn_parallel(net, d->batch * d->groups * p.chan_tasks, igrad_task, &j);
}
