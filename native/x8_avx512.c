/* The x8 tiles with AVX-512 VNNI dot products on 256-bit vectors (AVX512VL + AVX512_VNNI: vpdpbusd sums
 * four u8 x s8 products into each int32 lane), for Zen 4, Ice Lake and later. The same tiles as
 * x8_avx2.c (x8_tiles.h); the integer block dots are exact either way, so the results are the same bits.
 *
 * Not yet run on such a CPU by this project: `auto` keeps choosing AVX2 there; EDGEINFER_ISA=avx512vnni
 * selects it, and the tests run it wherever the CPU has it (tests/test_x8.py).
 */
#include "x8.h"

#if defined(NATIVE_X86)
#include <immintrin.h>

#define TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define FN __attribute__((target(TARGET)))
#define INL static inline __attribute__((always_inline, target(TARGET)))
#define ACC_ADD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define ACC_I32(acc) (acc)
#define ACC_SCALED(acc, sc) _mm256_mullo_epi32((acc), _mm256_srai_epi32(_mm256_slli_epi32((sc), 16), 16))
#define ACC_ADD32(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))

#define X8_TABLE native_x8_avx512vnni
#include "x8_tiles.h"


#endif /* NATIVE_X86 */
