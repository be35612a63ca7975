/* tests/isa: SMMLA (vmmlaq_s32) by its definition, the Arm ARM's pseudocode for SMMLA (vector):
 *     acc[2i + j] += sum over k < 8 of a[8i + k] * b[8j + k]      (i, j in {0, 1}; int8 x int8 -> int32)
 * a 2x8 matrix (a, row-major) times an 8x2 one (b, stored as its two columns) added to a 2x2 (acc). The
 * harness's x86 builds use it as the intrinsic (SIMDe 0.7.4 has no vmmlaq_s32; never in the extension), and
 * its aarch64 build checks the real instruction against it (x8_harness.c, check_smmla). */
#ifndef EDGEINFER_TEST_MMLA_REF_H
#define EDGEINFER_TEST_MMLA_REF_H
#include <stdint.h>

static inline void mmla_ref(int32_t acc[4], const int8_t a[16], const int8_t b[16]) {
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            int32_t sum = acc[2 * i + j];
            for (int k = 0; k < 8; k++) sum += (int32_t)a[8 * i + k] * (int32_t)b[8 * j + k];
            acc[2 * i + j] = sum;
        }
}
#endif
