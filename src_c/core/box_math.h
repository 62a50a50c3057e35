/* box_math.h - overlap measures of two boxes given by centre and size, and their
 * derivatives with respect to the first box, for the detection losses.
 *
 * For boxes a (the prediction) and b (the truth), edges l = x - w/2,
 * r = x + w/2, t = y - h/2, b = y + h/2:
 *     I    = max(0, min(ar, br) - max(al, bl)) * max(0, min(ab, bb) - max(at, bt))
 *     U    = aw*ah + bw*bh - I,              IoU = I / U (0 when I or U is 0)
 *     GIoU = IoU - (C - U) / C,              C the area of the smallest box enclosing both
 *     DIoU = IoU - rho^2 / c^2,              rho the distance of the centres, c the
 *                                            diagonal of the enclosing box
 *     CIoU = DIoU - alpha * v,               v = 4/pi^2 (atan(bw/bh) - atan(aw/ah))^2,
 *                                            alpha = v / (1 - IoU + v + 1e-6)
 * as darknet's box_iou, box_giou and box_ciou compute them (darknet's
 * box_diou raises rho^2/c^2 to the power 0.6 in the value it logs while its
 * gradient is that of rho^2/c^2; the DIoU here is the latter, the paper's).
 * When C (GIoU) or c (DIoU, CIoU) is zero the measure is the IoU.
 *
 * The derivative is the exact one of the value computed, alpha included,
 * with the one-sided choice min/max make at ties. Computed in double. The functions are
 * inline and compiled for the host and the device (core/box.c holds the
 * library's copies). */
#ifndef DN_BOX_MATH_H
#define DN_BOX_MATH_H

#include "hd.h"
#include "internal.h"

#include <math.h>

/* Edges as functions of centre and size: d(left)/d(x) = 1, d(left)/d(w) = -1/2,
 * d(right)/d(x) = 1, d(right)/d(w) = +1/2 (top, bottom likewise). */
static inline DN_HD float dn_box_measure_hd(dn_box a, dn_box b, dn_iou_kind kind, float grad[4])
{
    const double ax = a.x, ay = a.y, aw = a.w, ah = a.h, bx = b.x, by = b.y, bw = b.w, bh = b.h;
    const double al = ax - aw / 2, ar = ax + aw / 2, at = ay - ah / 2, ab = ay + ah / 2;
    const double bl = bx - bw / 2, br = bx + bw / 2, bt = by - bh / 2, bb = by + bh / 2;
    /* derivatives below are with respect to (ax, ay, aw, ah) */
    double iw = fmin(ar, br) - fmax(al, bl), ih = fmin(ab, bb) - fmax(at, bt);
    double I = 0, dI[4] = {0, 0, 0, 0};
    if (iw > 0 && ih > 0) {
        /* d(iw) = d(min(ar, br)) - d(max(al, bl)) */
        const double r_on = ar < br ? 1 : 0, l_on = al > bl ? 1 : 0;
        const double b_on = ab < bb ? 1 : 0, t_on = at > bt ? 1 : 0;
        const double diw_dx = r_on - l_on, diw_dw = 0.5 * r_on + 0.5 * l_on;
        const double dih_dy = b_on - t_on, dih_dh = 0.5 * b_on + 0.5 * t_on;
        I = iw * ih;
        dI[0] = diw_dx * ih;
        dI[1] = dih_dy * iw;
        dI[2] = diw_dw * ih;
        dI[3] = dih_dh * iw;
    }
    const double U = aw * ah + bw * bh - I;
    const double dU[4] = {-dI[0], -dI[1], ah - dI[2], aw - dI[3]};
    double iou = 0, diou[4] = {0, 0, 0, 0};
    if (I != 0 && U != 0) {
        iou = I / U;
        for (int k = 0; k < 4; ++k) diou[k] = (dI[k] * U - I * dU[k]) / (U * U);
    }
    double v = iou, d[4] = {diou[0], diou[1], diou[2], diou[3]};

    if (kind != DN_IOU_PLAIN) {
        const double cl = fmin(al, bl), cr = fmax(ar, br), ct = fmin(at, bt), cb = fmax(ab, bb);
        const double cw = cr - cl, ch = cb - ct;
        /* d(cw) = d(max(ar, br)) - d(min(al, bl)) */
        const double r_on = ar > br ? 1 : 0, l_on = al < bl ? 1 : 0;
        const double b_on = ab > bb ? 1 : 0, t_on = at < bt ? 1 : 0;
        const double dcw[4] = {r_on - l_on, 0, 0.5 * r_on + 0.5 * l_on, 0};
        const double dch[4] = {0, b_on - t_on, 0, 0.5 * b_on + 0.5 * t_on};
        if (kind == DN_IOU_GIOU) {
            const double C = cw * ch;
            if (C != 0) {
                /* GIoU = IoU - 1 + U / C */
                v = iou - 1 + U / C;
                for (int k = 0; k < 4; ++k) {
                    const double dC = dcw[k] * ch + cw * dch[k];
                    d[k] = diou[k] + (dU[k] * C - U * dC) / (C * C);
                }
            }
        } else {
            const double c2 = cw * cw + ch * ch;
            if (c2 != 0) {
                const double rho2 = (ax - bx) * (ax - bx) + (ay - by) * (ay - by);
                const double drho2[4] = {2 * (ax - bx), 2 * (ay - by), 0, 0};
                v = iou - rho2 / c2;
                for (int k = 0; k < 4; ++k) {
                    const double dc2 = 2 * cw * dcw[k] + 2 * ch * dch[k];
                    d[k] = diou[k] - (drho2[k] * c2 - rho2 * dc2) / (c2 * c2);
                }
                if (kind == DN_IOU_CIOU) {
                    const double k4 = 4 / (3.14159265358979323846 * 3.14159265358979323846);
                    const double theta = atan(bw / bh) - atan(aw / ah);
                    const double vr = k4 * theta * theta;
                    /* d(atan(aw/ah)) / d(aw) = ah / (aw^2 + ah^2), / d(ah) = -aw / (aw^2 + ah^2) */
                    const double s2 = aw * aw + ah * ah;
                    const double dv[4] = {0, 0, -2 * k4 * theta * ah / s2, 2 * k4 * theta * aw / s2};
                    const double D = 1 - iou + vr + 0.000001;
                    /* alpha * v = v^2 / D */
                    v -= vr * vr / D;
                    for (int k = 0; k < 4; ++k) d[k] -= (2 * vr * dv[k] * D - vr * vr * (dv[k] - diou[k])) / (D * D);
                }
            }
        }
    }
    if (grad)
        for (int k = 0; k < 4; ++k) grad[k] = (float)d[k];
    return (float)v;
}

/* the box of a truth row (x, y, w, h, class) */
static inline DN_HD dn_box dn_truth_box_hd(const float *row)
{
    const dn_box b = {row[0], row[1], row[2], row[3]};
    return b;
}

/* the cell (row * w + col) of a w x h grid that holds the box's centre, clamped to the grid (darknet's
 * (int)(x * w), (int)(y * h)) */
static inline DN_HD size_t dn_box_cell_hd(dn_box b, int w, int h)
{
    int col = (int)(b.x * w), row = (int)(b.y * h);
    col = col < 0 ? 0 : col >= w ? w - 1 : col;
    row = row < 0 ? 0 : row >= h ? h - 1 : row;
    return (size_t)row * w + col;
}

/* the class of a truth row (x, y, w, h, class), or -1 when the row holds no usable truth */
static inline DN_HD int dn_truth_class_hd(const float *row, int classes)
{
    for (int k = 0; k < 5; ++k)
        if (!isfinite(row[k])) return -1;
    if (!(row[2] > 0) || !(row[3] > 0)) return -1;
    if (row[4] < 0 || row[4] >= (float)classes) return -1;
    return (int)row[4];
}

#endif
