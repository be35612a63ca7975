/* NEON kernels of the x8 layouts (x8.h) for ARMv8 without the dot product instructions: each 4-byte dot
 * is two widening multiplies (int16 products, exact), a pairwise add and a pairwise widening add. The tiles are
 * x8_tiles_neon.h's; the same bits as the scalar kernels (x8.c) and every other set. Also here: whether
 * the CPU has dotprod (x8_neon_dotprod.c) and i8mm (x8_neon_i8mm.c), asked of the OS, and the sets it runs. */
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
    return 1;  /* SIMDe and the harness's SMMLA (tests/isa/) run anywhere */
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

int x8_neon_sets(x8_set *out) {
    int n = 0;
    const int dotprod = x8_neon_has_dotprod();
    if (dotprod && x8_neon_has_i8mm()) out[n++] = (x8_set){"neon_i8mm", native_x8_neon_i8mm};
    if (dotprod) out[n++] = (x8_set){"neon_dotprod", native_x8_neon_dotprod};
    out[n++] = (x8_set){"neon", native_x8_neon};
    return n;
}

/* acc + per 32-bit lane the sum of its four int8 products, in four instructions (smull, smull2, addp,
 * sadalp): the int16 products (|p| <= 128 x 127) of bytes 0-7 and 8-15, adjacent pairs of them summed in
 * int16 (exact: |p + p'| <= 32512 < 2^15, the activations being -127..127 as ggml's quantizers make them),
 * then adjacent pairs of those added into the int32 lanes */
static inline __attribute__((always_inline)) int32x4_t dot4_widen(int32x4_t acc, int8x16_t w, int8x16_t y) {
    const int16x8_t pairs = vpaddq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(y)), vmull_high_s8(w, y));
    return vpadalq_s16(acc, pairs);
}

#define DOT4(acc, w, y) dot4_widen((acc), (w), (y))
#define X8_TABLE native_x8_neon
#include "x8_tiles_neon.h"

#endif /* __ARM_NEON */
