// ggml's block formats on the device: each weight row is read 32 values (a "unit") at a time, the unit
// dequantized into registers. Layouts exactly as ggml-common.h (and edgeinfer/quant's numpy references):
//   Q4_0   {f16 d; u8 qs[16]}                        x = d (q - 8)         32 values, 18 bytes
//   Q4_1   {f16 d, m; u8 qs[16]}                     x = d q + m           32, 20
//   Q5_0   {f16 d; u8 qh[4]; u8 qs[16]}              x = d (q - 16)        32, 22
//   Q5_1   {f16 d, m; u8 qh[4]; u8 qs[16]}           x = d q + m           32, 24
//   Q8_0   {f16 d; i8 qs[32]}                        x = d q               32, 34
//   IQ4_NL {f16 d; u8 qs[16]}                        x = d kvalues[q]      32, 18
//   Q4_K   {f16 d, dmin; u8 scales[12]; u8 qs[128]}  x = d sc q - dmin m   256, 144
//   Q5_K   {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}             256, 176
//   Q6_K   {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}  x = d sc (q - 32)  256, 210
//   F32, F16, BF16: plain values.
// The low nibbles of a 32-value block's qs are its values 0..15, the high nibbles 16..31.
#pragma once

#include "common.cuh"

namespace ei {

enum GgmlType : int {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_IQ4_NL = 20, T_BF16 = 30,
};

static __constant__ const int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                      1,    13,   25,  38,  53,  69,  89,  113};

__device__ __forceinline__ uint32_t load_u32_bytes(const uint8_t *p) {  // any alignment
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t *q, float &sc, float &m) {
    if (j < 4) {
        sc = (float)(q[j] & 63);
        m = (float)(q[j + 4] & 63);
    } else {
        sc = (float)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Values u*32 .. u*32+31 of a row into v[32].
template <int T>
__device__ __forceinline__ void dequant_unit(const uint8_t *__restrict__ row, int u, float (&v)[32]);

template <>
__device__ __forceinline__ void dequant_unit<T_F32>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const float4 *p = reinterpret_cast<const float4 *>(row) + u * 8;  // rows are 128-byte multiples
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        float4 f = p[i];
        v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
}

template <>
__device__ __forceinline__ void dequant_unit<T_F16>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint16_t *p = reinterpret_cast<const uint16_t *>(row) + u * 32;
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = f16_to_f32(p[i]);
}

template <>
__device__ __forceinline__ void dequant_unit<T_BF16>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint16_t *p = reinterpret_cast<const uint16_t *>(row) + u * 32;
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = __uint_as_float((uint32_t)p[i] << 16);
}

template <>
__device__ __forceinline__ void dequant_unit<T_Q4_0>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)u * 18;
    const float d = load_f16(b);
    const uint8_t *qs = b + 2;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int q = qs[j];
        v[j] = (float)((q & 0xF) - 8) * d;
        v[j + 16] = (float)((q >> 4) - 8) * d;
    }
}

template <>
__device__ __forceinline__ void dequant_unit<T_Q4_1>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)u * 20;
    const float d = load_f16(b), m = load_f16(b + 2);
    const uint8_t *qs = b + 4;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int q = qs[j];
        v[j] = (float)(q & 0xF) * d + m;
        v[j + 16] = (float)(q >> 4) * d + m;
    }
}

template <>
__device__ __forceinline__ void dequant_unit<T_Q5_0>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)u * 22;
    const float d = load_f16(b);
    const uint32_t qh = load_u32_bytes(b + 2);
    const uint8_t *qs = b + 6;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int xh0 = ((qh >> j) << 4) & 0x10;
        const int xh1 = (qh >> (j + 12)) & 0x10;
        v[j] = (float)(((qs[j] & 0xF) | xh0) - 16) * d;
        v[j + 16] = (float)(((qs[j] >> 4) | xh1) - 16) * d;
    }
}

template <>
__device__ __forceinline__ void dequant_unit<T_Q5_1>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)u * 24;
    const float d = load_f16(b), m = load_f16(b + 2);
    const uint32_t qh = load_u32_bytes(b + 4);
    const uint8_t *qs = b + 8;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int xh0 = ((qh >> j) << 4) & 0x10;
        const int xh1 = (qh >> (j + 12)) & 0x10;
        v[j] = (float)((qs[j] & 0xF) | xh0) * d + m;
        v[j + 16] = (float)((qs[j] >> 4) | xh1) * d + m;
    }
}

template <>
__device__ __forceinline__ void dequant_unit<T_Q8_0>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)u * 34;
    const float d = load_f16(b);
    const int8_t *qs = reinterpret_cast<const int8_t *>(b + 2);
#pragma unroll
    for (int j = 0; j < 32; ++j) v[j] = (float)qs[j] * d;
}

template <>
__device__ __forceinline__ void dequant_unit<T_IQ4_NL>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)u * 18;
    const float d = load_f16(b);
    const uint8_t *qs = b + 2;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        v[j] = (float)kvalues_iq4nl[qs[j] & 0xF] * d;
        v[j + 16] = (float)kvalues_iq4nl[qs[j] >> 4] * d;
    }
}

// Q4_K: unit j of a super-block is sub-block j; sub-blocks 2p and 2p+1 share the 32 bytes qs[32p..],
// low nibbles for the first, high for the second
template <>
__device__ __forceinline__ void dequant_unit<T_Q4_K>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)(u >> 3) * 144;
    const int j = u & 7;
    float sc, m;
    scale_min_k4(j, b + 4, sc, m);
    const float d1 = load_f16(b) * sc, m1 = load_f16(b + 2) * m;
    const uint8_t *q = b + 16 + 32 * (j >> 1);
    const int shift = (j & 1) * 4;
#pragma unroll
    for (int l = 0; l < 32; ++l) v[l] = d1 * (float)((q[l] >> shift) & 0xF) - m1;
}

// Q5_K: as Q4_K, plus a fifth bit: bit j of qh[l] for value l of sub-block j
template <>
__device__ __forceinline__ void dequant_unit<T_Q5_K>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)(u >> 3) * 176;
    const int j = u & 7;
    float sc, m;
    scale_min_k4(j, b + 4, sc, m);
    const float d1 = load_f16(b) * sc, m1 = load_f16(b + 2) * m;
    const uint8_t *qh = b + 16;
    const uint8_t *q = b + 48 + 32 * (j >> 1);
    const int shift = (j & 1) * 4;
#pragma unroll
    for (int l = 0; l < 32; ++l) v[l] = d1 * (float)(((q[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4)) - m1;
}

// Q6_K: each half (128 values) of a super-block has 64 bytes of ql, 32 of qh and 8 scales; its four
// 32-value units r = 0..3 take ql[l + 32 (r & 1)] >> 4 (r >> 1), qh[l] >> 2r and scale 2r + l / 16
template <>
__device__ __forceinline__ void dequant_unit<T_Q6_K>(const uint8_t *__restrict__ row, int u, float (&v)[32]) {
    const uint8_t *b = row + (size_t)(u >> 3) * 210;
    const int j = u & 7, half = j >> 2, r = j & 3;
    const float d = load_f16(b + 208);
    const uint8_t *ql = b + 64 * half + 32 * (r & 1);
    const uint8_t *qh = b + 128 + 32 * half;
    const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + 8 * half + 2 * r;
    const int shift_l = 4 * (r >> 1), shift_h = 2 * r;
    const float d0 = d * (float)sc[0], d1 = d * (float)sc[1];
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        const int q = (((ql[l] >> shift_l) & 0xF) | (((qh[l] >> shift_h) & 3) << 4)) - 32;
        v[l] = (l < 16 ? d0 : d1) * (float)q;
    }
}

}  // namespace ei
