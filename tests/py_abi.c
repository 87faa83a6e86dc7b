/* py_abi.c: sizes and field offsets of the structs of dropblock.h as this compiler lays them out,
 * as JSON, for tests/test_python.py to compare with the ctypes mirror in python/dropblock/_lib.py. */
#include <dropblock/dropblock.h>
#include <stddef.h>
#include <stdio.h>

#define F(s, f) printf("%s\"%s\":%zu", first ? "" : ",", #f, offsetof(struct s, f)), first = 0
#define S(s) printf("%s\"%s\":{\"size\":%zu,\"fields\":{", nstruct++ ? "," : "", #s, sizeof(struct s)), first = 1
#define E() printf("}}")

int main(void)
{
    int first = 1, nstruct = 0;
    printf("{");
    S(dropblock_params);
    F(dropblock_params, shape);
    F(dropblock_params, layout);
    F(dropblock_params, dtype);
    F(dropblock_params, rate);
    F(dropblock_params, block);
    F(dropblock_params, seed);
    F(dropblock_params, stream);
    F(dropblock_params, normalize);
    F(dropblock_params, share);
    F(dropblock_params, mode);
    F(dropblock_params, compat);
    F(dropblock_params, training);
    F(dropblock_params, has_position);
    F(dropblock_params, position);
    F(dropblock_params, depth);
    F(dropblock_params, block_depth);
    E();
    S(dropblock_result);
    F(dropblock_result, kept);
    F(dropblock_result, total);
    F(dropblock_result, scale_bits);
    F(dropblock_result, device);
    F(dropblock_result, timing_us);
    F(dropblock_result, message);
    E();
    S(dropblock_device_info);
    F(dropblock_device_info, id);
    F(dropblock_device_info, api);
    F(dropblock_device_info, vendor);
    F(dropblock_device_info, name);
    F(dropblock_device_info, driver);
    F(dropblock_device_info, uuid);
    F(dropblock_device_info, kind);
    F(dropblock_device_info, max_buffer);
    F(dropblock_device_info, global_mem);
    F(dropblock_device_info, healthy);
    F(dropblock_device_info, can_export);
    F(dropblock_device_info, semaphores);
    F(dropblock_device_info, semaphore_export);
    E();
    S(dropblock_local_options);
    F(dropblock_local_options, backends);
    F(dropblock_local_options, cache_dir);
    E();
    S(dropblock_connect_options);
    F(dropblock_connect_options, socket_path);
    F(dropblock_connect_options, timeout_ms);
    F(dropblock_connect_options, job_timeout_ms);
    E();
    S(dropblock_limits);
    F(dropblock_limits, max_region_bytes);
    F(dropblock_limits, max_client_bytes);
    F(dropblock_limits, max_client_jobs);
    F(dropblock_limits, mem_available);
    E();
    S(dropblock_device_buffer);
    F(dropblock_device_buffer, fd);
    F(dropblock_device_buffer, size);
    F(dropblock_device_buffer, allocation_size);
    F(dropblock_device_buffer, memory_type_index);
    F(dropblock_device_buffer, dedicated);
    F(dropblock_device_buffer, host_mappable);
    F(dropblock_device_buffer, handle_type);
    F(dropblock_device_buffer, device);
    F(dropblock_device_buffer, device_uuid);
    F(dropblock_device_buffer, driver_uuid);
    F(dropblock_device_buffer, region);
    F(dropblock_device_buffer, conn_gen);
    F(dropblock_device_buffer, local);
    F(dropblock_device_buffer, local_dev);
    E();
    S(dropblock_ref);
    F(dropblock_ref, buffer);
    F(dropblock_ref, ptr);
    F(dropblock_ref, offset);
    E();
    printf(",\"enum_size\":%zu}\n", sizeof(dropblock_layout));
    return 0;
}
