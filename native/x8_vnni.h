/* What the two VNNI kernel sets (x8_avx512.c, x8_avxvnni.c) share for x8_tiles.h: vpdpbusd sums four
 * u8 x s8 products into each int32 lane, so an accumulator is int32 lanes already, and a scale given as an
 * int16 pair (sc, sc) per lane is applied as the 32-bit product with sc. Each set defines ACC_ADD and
 * ACC_ADD32 as its own form of vpdpbusd. */
#define ACC_I32(acc) (acc)
#define ACC_SCALED(acc, sc) _mm256_mullo_epi32((acc), _mm256_srai_epi32(_mm256_slli_epi32((sc), 16), 16))
