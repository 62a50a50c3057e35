/* box.c - the overlap measures of box_math.h (see there) for the code that
 * links them: the detection losses and the evaluation. */
#include "box_math.h"

float dn_box_measure(dn_box a, dn_box b, dn_iou_kind kind, float grad[4])
{
    return dn_box_measure_hd(a, b, kind, grad);
}

int dn_truth_class(const float *row, int classes) { return dn_truth_class_hd(row, classes); }
