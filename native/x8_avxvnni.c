/* The x8 tiles with AVX-VNNI dot products: the VEX form of vpdpbusd (four u8 x s8 products summed into
 * each int32 lane of a 256-bit vector) on Intel client CPUs without AVX-512 (Alder Lake, Meteor Lake,
 * Arrow Lake) and Zen 5 desktops (which have AVX-512 VNNI too, and get that set). The same tiles as
 * x8_avx2.c (x8_tiles.h), the same instruction's arithmetic as x8_avx512.c: the same bits.
 *
 * Verified through emulation, not on hardware: tests/test_isa_emulated.py compiles these tiles against
 * SIMDe (whose vpdpbusd stands in for the VEX one: the same operation) and checks them bit for bit
 * against the scalar kernels (x8.c). `auto` chooses this set where the CPU has AVX-VNNI but not AVX-512
 * VNNI; EDGEINFER_ISA=avxvnni selects it.
 */
#include "x8.h"

#if defined(NATIVE_X86)
#include <immintrin.h>

#define X8_TARGET "avx2,fma,f16c,avxvnni"
#include "x8_vnni.h"
#define ACC_ADD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#define ACC_ADD32(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))

#define X8_TABLE native_x8_avxvnni
#include "x8_tiles.h"

#endif /* NATIVE_X86 */
