/* cuda_abi.c: the layout of cuda.h's external-memory and external-semaphore structs as the CUDA toolkit declares them,
 * as JSON, for tests/test_python_device.py to compare with the ctypes mirror in python/dropblock/cuda.py (built where
 * the toolkit is; it needs no driver to run). */
#include <cuda.h>
#include <stddef.h>
#include <stdio.h>

int main(void)
{
    printf("{\"handle_desc\":{\"size\":%zu,\"type\":%zu,\"handle\":%zu,\"size_field\":%zu,\"flags\":%zu},",
           sizeof(CUDA_EXTERNAL_MEMORY_HANDLE_DESC), offsetof(CUDA_EXTERNAL_MEMORY_HANDLE_DESC, type),
           offsetof(CUDA_EXTERNAL_MEMORY_HANDLE_DESC, handle), offsetof(CUDA_EXTERNAL_MEMORY_HANDLE_DESC, size),
           offsetof(CUDA_EXTERNAL_MEMORY_HANDLE_DESC, flags));
    printf("\"buffer_desc\":{\"size\":%zu,\"offset\":%zu,\"size_field\":%zu,\"flags\":%zu},",
           sizeof(CUDA_EXTERNAL_MEMORY_BUFFER_DESC), offsetof(CUDA_EXTERNAL_MEMORY_BUFFER_DESC, offset),
           offsetof(CUDA_EXTERNAL_MEMORY_BUFFER_DESC, size), offsetof(CUDA_EXTERNAL_MEMORY_BUFFER_DESC, flags));
    printf("\"sem_desc\":{\"size\":%zu,\"type\":%zu,\"handle\":%zu,\"flags\":%zu},",
           sizeof(CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC), offsetof(CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC, type),
           offsetof(CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC, handle), offsetof(CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC, flags));
    printf("\"signal_params\":{\"size\":%zu,\"fence\":%zu,\"flags\":%zu},",
           sizeof(CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS),
           offsetof(CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS, params.fence.value),
           offsetof(CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS, flags));
    printf("\"wait_params\":{\"size\":%zu,\"fence\":%zu,\"flags\":%zu},", sizeof(CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS),
           offsetof(CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS, params.fence.value),
           offsetof(CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS, flags));
    printf("\"opaque_fd\":%d,\"dedicated\":%d,\"timeline_fd\":%d}\n", (int)CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
           (int)CUDA_EXTERNAL_MEMORY_DEDICATED, (int)CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD);
    return 0;
}
