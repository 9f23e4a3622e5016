/* A stand-in for the NVIDIA driver's libcuda, for tests/unit/test_cuda_memory.py on machines
 * without a GPU: the same symbols and C signatures as cuda.h, over host memory. It checks what
 * crosses the ctypes boundary (the 64-byte handle by value, the flags, 64-bit pointers and
 * sizes), so that a wrong signature in daemon/cuda_memory.py fails here and not first on a GPU.
 * A handle names host memory: bytes 0-7 its address, 8-15 its size, 16-63 the pattern i*3. */
#include <stdint.h>
#include <string.h>

typedef struct { unsigned char reserved[64]; } CUipcMemHandle;

static uint64_t opened_ptr, opened_size;
static int closes, current_set;
void *const CONTEXT = (void *)0x1234;

int stand_in_closes(void) { return closes; }
int cuInit(unsigned int flags) { return flags == 0 ? 0 : 1; }
int cuDeviceGetCount(int *count) { *count = 1; return 0; }
int cuDeviceGet(int *device, int ordinal) { if (ordinal != 0) return 101; *device = 0; return 0; }
int cuDevicePrimaryCtxRetain(void **ctx, int device) { if (device != 0) return 101; *ctx = CONTEXT; return 0; }
int cuCtxSetCurrent(void *ctx) { if (ctx != CONTEXT) return 201; current_set = 1; return 0; }
int cuCtxSynchronize(void) { return current_set ? 0 : 201; }

int cuIpcOpenMemHandle_v2(uint64_t *ptr, CUipcMemHandle handle, unsigned int flags) {
    if (flags != 1 || !current_set) return 1;
    for (int i = 16; i < 64; i++)
        if (handle.reserved[i] != (unsigned char)(i * 3)) return 1;  /* CUDA_ERROR_INVALID_VALUE */
    memcpy(&opened_ptr, handle.reserved, 8);
    memcpy(&opened_size, handle.reserved + 8, 8);
    *ptr = opened_ptr;
    return 0;
}
int cuIpcCloseMemHandle(uint64_t ptr) { if (ptr != opened_ptr) return 1; closes++; return 0; }
int cuMemGetAddressRange_v2(uint64_t *base, size_t *size, uint64_t ptr) {
    if (ptr != opened_ptr) return 1;
    *base = opened_ptr; *size = opened_size; return 0;
}
int cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t n) {
    if (src < opened_ptr || src + n > opened_ptr + opened_size) return 700;  /* ILLEGAL_ADDRESS */
    memcpy(dst, (void *)src, n); return 0;
}
int cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t n) {
    if (dst < opened_ptr || dst + n > opened_ptr + opened_size) return 700;
    memcpy((void *)dst, src, n); return 0;
}
int cuGetErrorName(int result, const char **out) {
    switch (result) {
    case 1: *out = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 101: *out = "CUDA_ERROR_INVALID_DEVICE"; return 0;
    case 700: *out = "CUDA_ERROR_ILLEGAL_ADDRESS"; return 0;
    default: return 1;
    }
}
int cuGetErrorString(int result, const char **out) {
    switch (result) {
    case 1: *out = "invalid argument"; return 0;
    case 101: *out = "invalid device ordinal"; return 0;
    case 700: *out = "an illegal memory access was encountered"; return 0;
    default: return 1;
    }
}
