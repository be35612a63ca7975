/* tests/isa: what <arm_neon.h> means to an x8 kernel set compiled with -DX8_EMULATED on x86
 * (test_isa_emulated.py): SIMDe's NEON (with the dot product), under the intrinsics' own names, and SMMLA
 * (vmmlaq_s32, which SIMDe 0.7.4 lacks) from its definition (../mmla_ref.h). */
#ifndef EDGEINFER_TEST_SIMDE_ARM_NEON_H
#define EDGEINFER_TEST_SIMDE_ARM_NEON_H
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#include "../mmla_ref.h"

#if !defined(vmmlaq_s32)
static inline simde_int32x4_t x8_emulated_vmmlaq_s32(simde_int32x4_t r, simde_int8x16_t a, simde_int8x16_t b) {
    int32_t acc[4];
    int8_t av[16], bv[16];
    simde_vst1q_s32(acc, r);
    simde_vst1q_s8(av, a);
    simde_vst1q_s8(bv, b);
    mmla_ref(acc, av, bv);
    return simde_vld1q_s32(acc);
}
#define vmmlaq_s32(r, a, b) x8_emulated_vmmlaq_s32((r), (a), (b))
#endif
#endif
