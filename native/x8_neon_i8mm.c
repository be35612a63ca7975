/* NEON kernels of the x8 layouts (x8.h) with the int8 matrix multiply (SMMLA, FEAT_I8MM: ARMv8.6, Apple M2
 * and later, Graviton 3 and later, Cortex-A510/A710/X2 and later) for prompts: the tiles of 2-4 tokens
 * multiply two rows x 8 quants by two tokens x 8 activations per instruction (x8_tiles_neon.h, run_pair);
 * a single token (a decode) runs the dotprod set's sdot tiles, which every i8mm CPU also has. The same
 * bits as every other set (x8.c's scalar kernels define them); only called where x8_neon_has_i8mm() and
 * x8_neon_has_dotprod() said yes. */
#include "x8.h"

#if defined(__ARM_NEON) || defined(X8_EMULATED_NEON)
#include <arm_neon.h>

#if defined(__clang__)
#define X8_TARGET "dotprod,i8mm"
#else
#define X8_TARGET "arch=armv8.2-a+dotprod+i8mm"
#endif
#define DOT4(acc, w, y) vdotq_s32((acc), (w), (y))
#define DOT4_LANE(acc, w, y, lane) vdotq_laneq_s32((acc), (w), (y), lane)
#define X8_I8MM 1
#define X8_TABLE native_x8_neon_i8mm
#include "x8_tiles_neon.h"

#endif /* __ARM_NEON */
