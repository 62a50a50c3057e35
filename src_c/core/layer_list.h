/* layer_list.h - every layer type, one line each: DN_LAYER(name) for a
 * layer that runs on the host alone, DN_LAYER_GPU(name) for one whose
 * layers/<name>.cu defines dn_<name>_forward_gpu and _backward_gpu. Each
 * names the ops table dn_<name>_ops of layers/<name>.c, whose .type is the
 * cfg section. Included with the two macros defined (core/registry.c: the
 * table of types; core/cuda.h: the device passes' declarations); adding a
 * layer type is its files and one line here. */
DN_LAYER_GPU(convolutional)
DN_LAYER_GPU(connected)
DN_LAYER_GPU(maxpool)
DN_LAYER_GPU(avgpool)
DN_LAYER_GPU(local_avgpool)
DN_LAYER_GPU(route)
DN_LAYER_GPU(shortcut)
DN_LAYER_GPU(upsample)
DN_LAYER_GPU(reorg)
DN_LAYER(reorg3d) /* [reorg]'s passes (layers/reorg.c) */
DN_LAYER_GPU(dropout)
DN_LAYER_GPU(softmax)
DN_LAYER_GPU(cost)
DN_LAYER_GPU(scale_channels)
DN_LAYER_GPU(sam)
DN_LAYER_GPU(batchnorm)
DN_LAYER_GPU(activation)
DN_LAYER(empty)
DN_LAYER_GPU(reshape)
DN_LAYER_GPU(scale)
DN_LAYER_GPU(reduction)
DN_LAYER_GPU(groupnorm)
DN_LAYER_GPU(deformable)
DN_LAYER_GPU(yolo)
DN_LAYER_GPU(region)
DN_LAYER(fcos) /* its loss on the host; on a device it runs its CPU passes on host copies */
