/* tests/isa: what <arm_neon.h> means to an x8 kernel set compiled with -DX8_EMULATED on x86
 * (test_isa_emulated.py): SIMDe's NEON (with the dot product), under the intrinsics' own names. */
#ifndef EDGEINFER_TEST_SIMDE_ARM_NEON_H
#define EDGEINFER_TEST_SIMDE_ARM_NEON_H
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#endif
