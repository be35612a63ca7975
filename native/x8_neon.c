/* NEON kernels of the x8 layouts (x8.h) for ARMv8 without the dot product instructions: each 4-byte dot
 * is two widening multiplies (int16 products, exact) and two pairwise widening adds. The tiles are
 * x8_tiles_neon.h's; the same bits as the scalar kernels (x8.c) and every other set. Also here: whether
 * the CPU has dotprod (x8_neon_dotprod.c) and i8mm, asked of the OS. */
#include "x8.h"

#if defined(__ARM_NEON) || defined(X8_EMULATED_NEON)
#include <arm_neon.h>

#if defined(__linux__) && !defined(X8_EMULATED)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
#elif defined(__APPLE__) && !defined(X8_EMULATED)
#include <sys/sysctl.h>
#endif

int x8_neon_has_dotprod(void) {
#if defined(X8_EMULATED)
    return 1;  /* SIMDe's sdot runs anywhere */
#elif defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int on = 0;
    size_t size = sizeof on;
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &on, &size, NULL, 0) == 0 && on;
#elif defined(__ARM_FEATURE_DOTPROD)
    return 1;  /* the compiler was told the target has it */
#else
    return 0;
#endif
}

int x8_neon_has_i8mm(void) {
#if defined(X8_EMULATED)
    return 0;
#elif defined(__linux__)
    return (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0;
#elif defined(__APPLE__)
    int on = 0;
    size_t size = sizeof on;
    return sysctlbyname("hw.optional.arm.FEAT_I8MM", &on, &size, NULL, 0) == 0 && on;
#elif defined(__ARM_FEATURE_MATMUL_INT8)
    return 1;
#else
    return 0;
#endif
}

/* acc + per 32-bit lane the sum of its four int8 products: the products of bytes 0-7 and 8-15 in int16
 * (|p| <= 2^14), pairs summed to int32, then pairs of those (exact) */
static inline __attribute__((always_inline)) int32x4_t dot4_widen(int32x4_t acc, int8x16_t w, int8x16_t y) {
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(y)));
    const int32x4_t hi = vpaddlq_s16(vmull_high_s8(w, y));
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
}

#define DOT4(acc, w, y) dot4_widen((acc), (w), (y))
#define X8_TABLE native_x8_neon
#include "x8_tiles_neon.h"

#endif /* __ARM_NEON */
