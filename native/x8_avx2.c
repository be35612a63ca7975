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

#define X8_TARGET "avx2,fma,f16c"
/* int16 pair sums (pmaddubsw), widened by pmaddwd */
#define ACC_ADD(acc, u, s) _mm256_add_epi16((acc), _mm256_maddubs_epi16((u), (s)))
#define ACC_I32(acc) _mm256_madd_epi16((acc), _mm256_set1_epi16(1))
#define ACC_SCALED(acc, sc) _mm256_madd_epi16((acc), (sc))
#define ACC_ADD32(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))

#define X8_TABLE native_x8_avx2
#include "x8_tiles.h"
#include "transpose_avx2.h"

/* x8_pack's 4-byte fields on AVX2: 8 rows' words transposed 8 (or 4) at a time in registers. rows[r] +
 * off: row r's field; g: the group's field (word i of row r at (8 i + r) * 4). n_words a multiple of 4. */
FN void x8_pack_field4_avx2(const uint8_t *const rows[8], int64_t off, int n_words, uint8_t *g) {
    int i = 0;
    for (; i + 8 <= n_words; i += 8) {
        __m256i v[8];
        for (int r = 0; r < 8; r++) v[r] = load256(rows[r] + off + 4 * i);
        transpose8_epi32(v);  /* v[k]: word i + k of the eight rows */
        for (int k = 0; k < 8; k++) _mm256_storeu_si256((__m256i *)(g + 32 * (i + k)), v[k]);
    }
    for (; i + 4 <= n_words; i += 4) {  /* rows r and r + 4 share a register: a 4 x 4 transpose per lane */
        __m256i v[4];
        for (int r = 0; r < 4; r++)
            v[r] = _mm256_setr_m128i(_mm_loadu_si128((const __m128i *)(rows[r] + off + 4 * i)),
                                     _mm_loadu_si128((const __m128i *)(rows[r + 4] + off + 4 * i)));
        const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
        const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
        __m256i *o = (__m256i *)(g + 32 * i);
        _mm256_storeu_si256(o + 0, _mm256_unpacklo_epi64(t0, t2));
        _mm256_storeu_si256(o + 1, _mm256_unpackhi_epi64(t0, t2));
        _mm256_storeu_si256(o + 2, _mm256_unpacklo_epi64(t1, t3));
        _mm256_storeu_si256(o + 3, _mm256_unpackhi_epi64(t1, t3));
    }
}


#endif /* NATIVE_X86 */
