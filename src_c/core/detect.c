/* detect.c - pixels in, detections out, in one call (dn_net_detect): the
 * image goes into the network input as dn_net_set_input_image resizes it,
 * the network runs, and dn_net_detections decodes and suppresses. The image
 * buffer's size is checked against its dimensions, so a wrong size or
 * channel count is an error status, not a read past the buffer. */
#include "layer.h"

dn_status dn_net_detect(dn_net *net, const uint8_t *pixels, size_t size, int width, int height, int channels,
                        int stride, int bgr, int letterbox, float thresh, float nms, const dn_detection **dets,
                        int *count)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!dets || !count) return dn_fail(DN_ERR_ARG, "output pointer is NULL");
    *dets = NULL;
    *count = 0;
    if (!pixels) return dn_fail(DN_ERR_ARG, "pixels are NULL");
    if (width < 1 || height < 1) return dn_fail(DN_ERR_ARG, "bad image size %d x %d", width, height);
    if (channels != 1 && channels != 3)
        return dn_fail(DN_ERR_ARG, "images must have 1 or 3 channels, got %d", channels);
    const size_t row = (size_t)width * (size_t)channels;
    if (stride == 0 && row <= (size_t)INT32_MAX) stride = (int)row;
    if (stride < 0 || (size_t)stride < row)
        return dn_fail(DN_ERR_ARG, "row stride %d is less than width x channels (%d x %d)", stride, width, channels);
    const size_t want = (size_t)(height - 1) * (size_t)stride + row;
    if (size < want)
        return dn_fail(DN_ERR_SHAPE, "a %d x %d image of %d channels with rows %d bytes apart takes %zu bytes; %zu given",
                       width, height, channels, stride, want, size);
    if (letterbox < 0 && dn_opt_int(net, "letter_box", &letterbox) != DN_OK)
        letterbox = 0; /* a network built by hand without [net] options: darknet's default */
    letterbox = letterbox ? 1 : 0;
    int found = 0;
    dn_status s = dn_net_set_input_image(net, 0, pixels, width, height, channels, stride, bgr ? 1 : 0, letterbox);
    if (!s) s = dn_net_forward_input(net);
    if (!s) s = dn_net_detections(net, 0, width, height, thresh, nms, letterbox, NULL, 0, &found);
    if (s) return s;
    *dets = net->candidates.items;
    *count = found;
    return DN_OK;
}
