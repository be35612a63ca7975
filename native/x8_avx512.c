/* The x8 tiles with AVX-512 VNNI dot products on 256-bit vectors (AVX512VL + AVX512_VNNI: vpdpbusd sums
 * four u8 x s8 products into each int32 lane), for Zen 4, Ice Lake and later. The same tiles as
 * x8_avx2.c (x8_tiles.h); the integer block dots are exact either way, so the results are the same bits.
 *
 * Verified through emulation, not on hardware: tests/test_isa_emulated.py compiles these tiles against
 * SIMDe's AVX-512 VNNI intrinsics and checks every x8 format, tile, token count and row split bit for bit
 * against the scalar kernels (x8.c) on an AVX2 machine. `auto` chooses this set where the CPU has
 * AVX-512 F/BW/VL/VNNI; tests/test_x8.py runs it wherever the CPU can.
 */
#include "x8.h"

#if defined(NATIVE_X86)
#include <immintrin.h>

#define X8_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#include "x8_vnni.h"
#define ACC_ADD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define ACC_ADD32(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))

#define X8_TABLE native_x8_avx512vnni
#include "x8_tiles.h"

#endif /* NATIVE_X86 */
