/* activation_math.h - darknet's elementwise activations and their
 * derivatives, one value at a time, shared by the CPU loops (activations.c)
 * and the CUDA kernels (activations.cu) so both compute the same formulas. */
#ifndef DN_ACTIVATION_MATH_H
#define DN_ACTIVATION_MATH_H

#include "hd.h"
#include "layer.h"

#include <math.h>

static inline DN_HD float softplus(float x)
{
    if (x > 20.f) return x;
    if (x < -20.f) return expf(x);
    return logf(expf(x) + 1.f);
}

static inline DN_HD float tanh_dn(float x) { return 2.f / (1.f + expf(-2.f * x)) - 1.f; }

static inline DN_HD float activate1(float x, dn_activation a)
{
    switch (a) {
    case DN_ACT_LINEAR: return x;
    case DN_ACT_LOGISTIC: return 1.f / (1.f + expf(-x));
    case DN_ACT_LOGGY: return 2.f / (1.f + expf(-x)) - 1.f;
    case DN_ACT_RELU: return x > 0 ? x : 0.f;
    case DN_ACT_RELU6: return x < 0 ? 0.f : (x > 6.f ? 6.f : x);
    case DN_ACT_ELU: return x >= 0 ? x : expf(x) - 1.f;
    case DN_ACT_SELU: return x >= 0 ? 1.0507f * x : 1.0507f * 1.6732f * (expf(x) - 1.f);
    case DN_ACT_GELU: return 0.5f * x * (1.f + tanhf(0.797885f * x + 0.035677f * x * x * x));
    case DN_ACT_RELIE: return x > 0 ? x : .01f * x;
    case DN_ACT_RAMP: return (x > 0 ? x : 0.f) + .1f * x;
    case DN_ACT_LEAKY:
    case DN_ACT_REVLEAKY: return x > 0 ? x : .1f * x;
    case DN_ACT_TANH: return tanh_dn(x);
    case DN_ACT_PLSE: return x < -4 ? .01f * (x + 4) : (x > 4 ? .01f * (x - 4) + 1 : .125f * x + .5f);
    case DN_ACT_STAIR: {
        int n = (int)floorf(x);
        return (n % 2 == 0) ? floorf(x / 2.f) : (x - n) + floorf(x / 2.f);
    }
    case DN_ACT_HARDTAN: return x < -1 ? -1.f : (x > 1 ? 1.f : x);
    case DN_ACT_LHTAN: return x < 0 ? .001f * x : (x > 1 ? .001f * (x - 1) + 1 : x);
    case DN_ACT_SWISH: return x / (1.f + expf(-x));
    case DN_ACT_MISH: return x * tanh_dn(softplus(x));
    case DN_ACT_HARD_MISH: return x > 0 ? x : (x > -2 ? x * x / 2 + x : 0.f);
    default: return x;
    }
}

/* f'(x) from y = f(x) (and x where the kind needs it) */
static inline DN_HD float gradient1(float y, float x, dn_activation a)
{
    switch (a) {
    case DN_ACT_LINEAR: return 1.f;
    case DN_ACT_LOGISTIC: return y * (1.f - y);
    case DN_ACT_LOGGY: return (1.f - y * y) / 2.f;
    case DN_ACT_RELU: return y > 0 ? 1.f : 0.f;
    case DN_ACT_RELU6: return y > 0 && y < 6.f ? 1.f : 0.f;
    case DN_ACT_ELU: return y >= 0 ? 1.f : y + 1.f;
    case DN_ACT_SELU: return y >= 0 ? 1.0507f : y + 1.0507f * 1.6732f;
    case DN_ACT_RELIE: return y > 0 ? 1.f : .01f;
    case DN_ACT_RAMP: return (y > 0 ? 1.f : 0.f) + .1f;
    case DN_ACT_LEAKY:
    case DN_ACT_REVLEAKY: return y > 0 ? 1.f : .1f;
    case DN_ACT_TANH: return 1.f - y * y;
    case DN_ACT_PLSE: return (y < 0 || y > 1) ? .01f : .125f;
    case DN_ACT_HARDTAN: return (y > -1 && y < 1) ? 1.f : 0.f;
    case DN_ACT_LHTAN: return (y > 0 && y < 1) ? 1.f : .001f;
    case DN_ACT_STAIR: return ((int)floorf(x) % 2 == 0) ? 0.f : 1.f;
    case DN_ACT_GELU: {
        const float t = tanhf(0.797885f * x + 0.035677f * x * x * x);
        return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * (0.797885f + 3.f * 0.035677f * x * x);
    }
    case DN_ACT_SWISH: {
        const float s = 1.f / (1.f + expf(-x));
        return s + x * s * (1.f - s);
    }
    case DN_ACT_MISH: {
        const float sp = softplus(x), t = tanh_dn(sp);
        const float dsp = x > 20.f ? 1.f : (x < -20.f ? expf(x) : 1.f / (1.f + expf(-x)));
        return t + x * (1.f - t * t) * dsp;
    }
    case DN_ACT_HARD_MISH: return x > 0 ? 1.f : (x > -2 ? x + 1.f : 0.f);
    default: return 1.f;
    }
}

#endif /* DN_ACTIVATION_MATH_H */
