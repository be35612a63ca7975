/* tests/isa: what <immintrin.h> means to an x8 kernel set compiled with -DX8_EMULATED (test_isa_emulated.py):
 * the compiler's own header for what this CPU runs (the harness compiles with -mavx2 -mfma -mf16c), then
 * SIMDe for the rest (AVX-512 F/BW/VL/VNNI), its functions under the intrinsics' own names. */
#ifndef EDGEINFER_TEST_SIMDE_IMMINTRIN_H
#define EDGEINFER_TEST_SIMDE_IMMINTRIN_H
#include_next <immintrin.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
/* AVX-VNNI's vpdpbusd (VEX) is AVX512-VNNI's (EVEX) on 256-bit vectors: the same operation, one SIMDe
 * function (SIMDe 0.7 has no AVX-VNNI header) */
#define _mm256_dpbusd_avx_epi32(src, a, b) simde_mm256_dpbusd_epi32((src), (a), (b))
#endif
