/* NEON kernels of the x8 layouts (x8.h) with the ARMv8.2 dot product (sdot: four int8 products summed into
 * each int32 lane), for Apple M1 and later, Cortex-A55/A76 and later, Graviton 2 and later. The tiles are
 * x8_tiles_neon.h's, each sdot taking its four activation bytes from a lane of a loaded vector (sdot by
 * element); only called where x8_neon_has_dotprod() said yes. */
#include "x8.h"

#if defined(__ARM_NEON) || defined(X8_EMULATED_NEON)
#include <arm_neon.h>

#if defined(__clang__)
#define X8_TARGET "dotprod"
#else
#define X8_TARGET "arch=armv8.2-a+dotprod"
#endif
#define DOT4(acc, w, y) vdotq_s32((acc), (w), (y))
#define DOT4_LANE(acc, w, y, lane) vdotq_laneq_s32((acc), (w), (y), lane)
#define X8_TABLE native_x8_neon_dotprod
#include "x8_tiles_neon.h"

#endif /* __ARM_NEON */
