// The library's state and the calls that are not kernels: errors, device choice and information,
// memory, weight uploads, and the staging of each call's inputs and outputs.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common.cuh"

namespace ei {

static thread_local char g_error[1024] = "";

int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    return 1;
}

int check(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return 0;
    cudaGetLastError();  // clear a sticky launch error where it is not fatal
    return fail("%s failed: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

static std::mutex g_lock;
static int g_device = -1;
static cudaStream_t g_stream = nullptr;

// staging: pinned host buffers for inputs and outputs, device buffers for inputs, outputs, scratch
struct Buffer {
    char *p = nullptr;
    size_t size = 0;
};
static Buffer g_h_in, g_h_out, g_d_in, g_d_out, g_d_scratch;

std::mutex &lock() { return g_lock; }
cudaStream_t stream() { return g_stream; }

int enter() {
    if (g_device < 0) return fail("the CUDA library is not initialized: call ei_cuda_init first");
    EI_CUDA(cudaSetDevice(g_device));
    return 0;
}

static size_t grown(size_t need, size_t have) {
    size_t n = have ? have : (size_t)1 << 20;
    while (n < need) n *= 2;
    return n;
}

static int ensure_host(Buffer &b, size_t need) {
    if (need <= b.size) return 0;
    if (b.p) cudaFreeHost(b.p);
    b.p = nullptr;
    b.size = 0;
    size_t n = grown(need, 0);
    EI_CUDA(cudaMallocHost((void **)&b.p, n));
    b.size = n;
    return 0;
}

static int ensure_device(Buffer &b, size_t need) {
    if (need <= b.size) return 0;
    if (b.p) {
        EI_CUDA(cudaStreamSynchronize(g_stream));  // nothing in flight may still use the old buffer
        cudaFree(b.p);
    }
    b.p = nullptr;
    b.size = 0;
    size_t n = grown(need, 0);
    if (cudaMalloc((void **)&b.p, n) != cudaSuccess) {
        cudaGetLastError();
        n = align_up(need);  // no room for the doubled size: exactly what is needed
        EI_CUDA(cudaMalloc((void **)&b.p, n));
    }
    b.size = n;
    return 0;
}

size_t Transfer::in(const void *host, size_t n_bytes) {
    size_t off = in_total_;
    ins_.push_back({host, nullptr, n_bytes, off});
    in_total_ = align_up(off + n_bytes);
    return off;
}

size_t Transfer::out(void *host, size_t n_bytes) {
    size_t off = out_total_;
    outs_.push_back({nullptr, host, n_bytes, off});
    out_total_ = align_up(off + n_bytes);
    return off;
}

size_t Transfer::scratch(size_t n_bytes) {
    size_t off = scratch_total_;
    scratch_total_ = align_up(off + n_bytes);
    return off;
}

int Transfer::send() {
    EI_TRY(ensure_device(g_d_in, in_total_ ? in_total_ : ALIGN));
    EI_TRY(ensure_device(g_d_out, out_total_ ? out_total_ : ALIGN));
    EI_TRY(ensure_device(g_d_scratch, scratch_total_ ? scratch_total_ : ALIGN));
    d_in_ = g_d_in.p;
    d_out_ = g_d_out.p;
    d_scratch_ = g_d_scratch.p;
    if (in_total_ == 0) return 0;
    EI_TRY(ensure_host(g_h_in, in_total_));
    for (const Part &p : ins_)
        if (p.n) memcpy(g_h_in.p + p.off, p.src, p.n);
    EI_CUDA(cudaMemcpyAsync(d_in_, g_h_in.p, in_total_, cudaMemcpyHostToDevice, g_stream));
    return 0;
}

int Transfer::receive() {
    if (out_total_) {
        EI_TRY(ensure_host(g_h_out, out_total_));
        EI_CUDA(cudaMemcpyAsync(g_h_out.p, d_out_, out_total_, cudaMemcpyDeviceToHost, g_stream));
    }
    EI_CUDA(cudaStreamSynchronize(g_stream));
    for (const Part &p : outs_)
        if (p.n) memcpy(p.dst, g_h_out.p + p.off, p.n);
    return 0;
}

}  // namespace ei

using namespace ei;

extern "C" {

int ei_cuda_abi_version(void) { return EI_CUDA_ABI_VERSION; }

const char *ei_cuda_last_error(void) { return g_error; }

int ei_cuda_versions(int *runtime, int *driver) {
    *runtime = 0;
    *driver = 0;
    EI_CUDA(cudaRuntimeGetVersion(runtime));
    EI_CUDA(cudaDriverGetVersion(driver));
    return 0;
}

int ei_cuda_device_count(int *count) {
    *count = 0;
    EI_CUDA(cudaGetDeviceCount(count));
    return 0;
}

int ei_cuda_device_info(int device, char *name, int name_len, int *cc_major, int *cc_minor, int *n_sm,
                        size_t *total_mem) {
    cudaDeviceProp prop;
    EI_CUDA(cudaGetDeviceProperties(&prop, device));
    if (name && name_len > 0) {
        strncpy(name, prop.name, (size_t)name_len - 1);
        name[name_len - 1] = '\0';
    }
    *cc_major = prop.major;
    *cc_minor = prop.minor;
    *n_sm = prop.multiProcessorCount;
    *total_mem = prop.totalGlobalMem;
    return 0;
}

int ei_cuda_init(int device) {
    std::lock_guard<std::mutex> guard(g_lock);
    if (g_device == device) return 0;
    if (g_device >= 0) return fail("the CUDA library already runs on device %d, not %d", g_device, device);
    int count = 0;
    EI_CUDA(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count) return fail("there is no CUDA device %d (%d found)", device, count);
    EI_CUDA(cudaSetDevice(device));
    EI_CUDA(cudaFree(0));  // create the context now, not inside the first timed call
    EI_CUDA(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    g_device = device;
    return 0;
}

int ei_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    std::lock_guard<std::mutex> guard(g_lock);
    EI_TRY(enter());
    EI_CUDA(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}

int ei_cuda_upload(const void *host, size_t n_bytes, void **handle) {
    std::lock_guard<std::mutex> guard(g_lock);
    *handle = nullptr;
    EI_TRY(enter());
    void *p = nullptr;
    EI_CUDA(cudaMalloc(&p, n_bytes ? n_bytes : 1));
    // on the library's stream, then waited for: a plain cudaMemcpy from pageable memory may return before
    // its DMA ends, and the stream (non-blocking) would not wait for the legacy stream's copy
    cudaError_t e = cudaMemcpyAsync(p, host, n_bytes, cudaMemcpyHostToDevice, g_stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(g_stream);
    if (e != cudaSuccess) {
        cudaFree(p);
        return check(e, "copying a weight to the GPU");
    }
    *handle = p;
    return 0;
}

int ei_cuda_free(void *handle) {
    std::lock_guard<std::mutex> guard(g_lock);
    EI_TRY(enter());
    EI_CUDA(cudaStreamSynchronize(g_stream));
    EI_CUDA(cudaFree(handle));
    return 0;
}

}  // extern "C"
