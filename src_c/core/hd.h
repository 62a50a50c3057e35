/* hd.h - DN_HD marks a function compiled for the host and, under nvcc, for
 * the device too: the math headers that the .c and .cu files share
 * (core/box_math.h, ops/layer_math.h, layers/yolo_loss.h, ...) use it. */
#ifndef DN_HD_H
#define DN_HD_H

#ifdef __CUDACC__
#define DN_HD __host__ __device__
#else
#define DN_HD
#endif

#endif
