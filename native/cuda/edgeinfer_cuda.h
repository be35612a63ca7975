/* edgeinfer's CUDA kernels: the C ABI that edgeinfer/kernels/cuda/binding.py loads through ctypes.
 *
 * Every function returns 0 on success, or a non-zero status; ei_cuda_last_error() then gives one
 * sentence saying what failed (per host thread). All calls are serialized by one lock inside the
 * library, and each sets the device chosen at ei_cuda_init() for the calling thread.
 *
 * Arrays are host pointers (float32 C-contiguous unless said), copied to the device through pinned
 * staging buffers and back: one copy in, the kernels, one copy out, one synchronization per call.
 * Weights are the exception: ei_cuda_upload() copies a tensor's raw quantized blocks to the device
 * once, and matmuls take the device handle it returns.
 *
 * Weight types are ggml's numbers (GGMLQuantizationType): F32 0, F16 1, Q4_0 2, Q4_1 3, Q5_0 6,
 * Q5_1 7, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14, IQ4_NL 20, BF16 30; blocks laid out exactly as ggml's.
 */
#ifndef EDGEINFER_CUDA_H
#define EDGEINFER_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EI_CUDA_ABI_VERSION 1

#if defined(_WIN32)
#define EI_API __declspec(dllexport)
#else
#define EI_API __attribute__((visibility("default")))
#endif

EI_API int ei_cuda_abi_version(void);
EI_API const char *ei_cuda_last_error(void);

/* runtime and driver versions (e.g. 13000 for 13.0); the number of devices */
EI_API int ei_cuda_versions(int *runtime, int *driver);
EI_API int ei_cuda_device_count(int *count);
/* name (NUL-terminated, at most name_len bytes), compute capability, multiprocessors, memory */
EI_API int ei_cuda_device_info(int device, char *name, int name_len, int *cc_major, int *cc_minor,
                               int *n_sm, size_t *total_mem);

/* choose the device, create the stream; idempotent for the same device */
EI_API int ei_cuda_init(int device);
EI_API int ei_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);

/* weights: raw bytes to the device once; *handle is the device pointer */
EI_API int ei_cuda_upload(const void *host, size_t n_bytes, void **handle);
EI_API int ei_cuda_free(void *handle);
/* 1 when the matmul has a kernel for this ggml type, else 0 */
EI_API int ei_cuda_type_supported(int ggml_type);

/* y (n_tokens, n_rows) = x (n_tokens, n_cols) @ W.T; W on the device (n_rows rows of row_bytes);
 * n_cols a multiple of 32 */
EI_API int ei_cuda_matmul(int ggml_type, const void *w_handle, int64_t n_rows, int64_t n_cols,
                          int64_t row_bytes, const float *x, int64_t n_tokens, float *y);

/* out (n_rows, d) = x / sqrt(mean(x^2) + eps) * w (d,) */
EI_API int ei_cuda_rms_norm(const float *x, const float *w, int64_t n_rows, int64_t d, float eps, float *out);

/* out = x (n, n_head, head_dim) with the first n_rot values of each head rotated by the angles whose
 * cosines and sines are the rows cos, sin (n, n_rot / 2) (the tables' rows at each token's position);
 * neox: pairs (i, i + n_rot/2), else (2i, 2i + 1) */
EI_API int ei_cuda_rope(const float *x, const float *cos, const float *sin, int64_t n, int n_head,
                        int head_dim, int n_rot, int neox, float *out);

/* the stacked Q/K/V matmul's output qkv (n, H D + Hkv D + Hkv Dv) -> q (n, H, D), k (n, Hkv, D),
 * v (n, Hkv, Dv): per-head RMSNorm of q and k when q_norm / k_norm (D,) are given (else NULL),
 * then rope as ei_cuda_rope; v copied */
EI_API int ei_cuda_qkv(const float *qkv, int64_t n, int n_head, int n_head_kv, int head_dim, int head_dim_v,
                       const float *cos, const float *sin, int n_rot, int neox, const float *q_norm,
                       const float *k_norm, float eps, float *q, float *k, float *v);

/* out (n, H * Dv): q (n, H, D) against k (n_cells, Hkv, D), v (n_cells, Hkv, Dv); the sequence's token j
 * (position kv_pos[j], j < n_kv) is row cells[j] (cells NULL: row j, n_cells = n_kv); query i (position
 * q_pos[i]) sees token j when kv_pos[j] <= q_pos[i] and, when n_swa > 0, q_pos[i] - kv_pos[j] < n_swa;
 * query head h reads KV head h / (H / Hkv); softmax(scale q.k) v */
EI_API int ei_cuda_attention(const float *q, const float *k, const float *v, const int32_t *q_pos,
                             const int32_t *kv_pos, const int32_t *cells, int64_t n, int n_head, int head_dim,
                             int64_t n_cells, int n_head_kv, int head_dim_v, int64_t n_kv, int n_swa, float scale,
                             float *out);

/* out (n, f) = act(gu[:, :f]) * gu[:, f:], act 0: silu, 1: gelu_tanh */
EI_API int ei_cuda_glu(const float *gu, int64_t n, int64_t f, int act, float *out);

#ifdef __cplusplus
}
#endif

#endif
