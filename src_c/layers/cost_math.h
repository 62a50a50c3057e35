/* cost_math.h - [cost]'s loss of one value (layers/cost.c has the maths), for the host and the device. */
#ifndef DN_COST_MATH_H
#define DN_COST_MATH_H

#include "hd.h"

#include <math.h>

#define DN_COST_SECRET_NUM (-1234.f) /* darknet's SECRET_NUM: a masked truth */

enum { COST_SSE, COST_MASKED, COST_SMOOTH, COST_L1, COST_L2, COST_SMOOTH_L1, COST_HUBER };

/* the loss of input x against truth t (before the scale), its gradient into *g; batch: the images of the pass */
static inline DN_HD double dn_cost_term(int type, float x, float t, float sigma, float delta, int batch, float *g)
{
    const float d = x - t, a = fabsf(d);
    *g = 0.f;
    switch (type) {
    case COST_MASKED:
        if (t == DN_COST_SECRET_NUM) return 0.0;
        /* fall through */
    case COST_SSE:
        *g = d;
        return 0.5 * (double)d * d;
    case COST_SMOOTH:
        *g = a < 1.f ? d : (d > 0.f ? 1.f : -1.f);
        return a < 1.f ? 0.5 * (double)d * d : (double)a - 0.5;
    case COST_L2:
        *g = d / (float)batch;
        return 0.5 * (double)d * d / batch;
    case COST_SMOOTH_L1: {
        const float ss = sigma * sigma;
        if (a < 1.f / ss) {
            *g = ss * d;
            return 0.5 * (double)ss * d * d;
        }
        *g = d > 0.f ? 1.f : -1.f;
        return (double)a - 0.5 / ss;
    }
    case COST_HUBER:
        if (a <= delta) {
            *g = d;
            return 0.5 * (double)d * d;
        }
        *g = d > 0.f ? delta : -delta;
        return (double)delta * (a - 0.5 * delta);
    default:
        *g = d < 0.f ? -1.f : 1.f;
        return a;
    }
}

#endif
