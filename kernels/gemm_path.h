/* gemm_path: the expert GEMM paths of the cuda backend (kernels.h, "Grouped expert GEMMs"), apart
 * from the CUDA declarations so that the configuration (run.gemm) can name them in any build. */
#ifndef MOE_KERNELS_GEMM_PATH_H
#define MOE_KERNELS_GEMM_PATH_H

typedef enum {
    MOE_GEMM_PATH_AUTO = 0,
    MOE_GEMM_PATH_128x128,
    MOE_GEMM_PATH_128x256,
    MOE_GEMM_PATH_128x256_C2,
    MOE_GEMM_PATH_256x128,
    MOE_GEMM_PATH_128x128_PINGPONG,
    MOE_GEMM_PATH_SWAP32,
    MOE_GEMM_PATH_SWAP64,
    MOE_GEMM_PATH_CUDA_CORES,
    MOE_GEMM_PATH_CUBLAS,
    MOE_GEMM_PATH_COUNT,
    MOE_GEMM_PATH_CUTLASS_FIRST = MOE_GEMM_PATH_128x128, /* the CUTLASS paths: first .. last */
    MOE_GEMM_PATH_CUTLASS_LAST = MOE_GEMM_PATH_SWAP64,
} moe_gemm_path_t;

#endif
