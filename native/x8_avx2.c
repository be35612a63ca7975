/* AVX2 kernels of the x8 layouts (x8.h): a SIMD lane is a row, a tile is 8 rows x NT tokens (NT <= 4),
 * each group block decoded once for the NT tokens. Integer block dots in int16 / int32 lanes (exact), then
 * per block and (row, token) the float operations x8.h fixes: the scalar kernels in x8.c compute the same
 * bits.
 *
 * Every function carries __attribute__((target("avx2,fma,f16c"))); the file compiles with the default
 * flags and is only called after __builtin_cpu_supports said yes.
 */
#include "x8.h"

#if defined(NATIVE_X86)
#include <immintrin.h>

#define FN __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline, target("avx2,fma,f16c")))
/* int16 pair sums (pmaddubsw), widened by pmaddwd */
#define ACC_ADD(acc, u, s) _mm256_add_epi16((acc), _mm256_maddubs_epi16((u), (s)))
#define ACC_I32(acc) _mm256_madd_epi16((acc), _mm256_set1_epi16(1))
#define ACC_SCALED(acc, sc) _mm256_madd_epi16((acc), (sc))
#define ACC_ADD32(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))

#include "x8_tiles.h"

X8_ROWS(q4_0, tile_q4_0)
X8_ROWS(q8_0, tile_q8_0)
X8_ROWS(q4_k, tile_q4_k)
X8_ROWS(q6_k, tile_q6_k)
X8_ROWS(q5_0, tile_q5_0)
X8_ROWS(iq4_nl, tile_iq4_nl)
X8_ROWS(q5_k, tile_q5_k)
X8_ROWS(iq4_xs, tile_iq4_xs)

const native_rows_fn native_x8_avx2[GT_COUNT] = {
    [GT_Q4_0] = x8_q4_0, [GT_Q8_0] = x8_q8_0, [GT_Q4_K] = x8_q4_k, [GT_Q6_K] = x8_q6_k,
    [GT_Q5_0] = x8_q5_0, [GT_IQ4_NL] = x8_iq4_nl, [GT_Q5_K] = x8_q5_k, [GT_IQ4_XS] = x8_iq4_xs,
};

#endif /* NATIVE_X86 */
