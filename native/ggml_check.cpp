// Runs one ggml-cpu matrix product on caller data, so tests can hold each of ggml's CPU paths for a weight type
// (vec_dot per column, the patched small-batch kernels, tiled, repacked) against a NumPy reference and each
// other. Not used by generation.

#include "sirius.h"
#include "internal.h"

#include "ggml-cpu.h"
#include "ggml.h"

#include <cstring>
#include <string>

extern "C" int32_t sirius_ggml_mul_mat(int32_t type, int32_t n, int32_t rows, int32_t cols, const void * weights,
                                       const float * x, float * out, int32_t n_threads) {
    if (type < 0 || type >= GGML_TYPE_COUNT || !ggml_get_type_traits((ggml_type) type)->type_name) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown ggml type " + std::to_string(type));
    }
    const ggml_type t = (ggml_type) type;
    if (n <= 0 || rows <= 0 || cols <= 0 || n % ggml_blck_size(t) != 0 || !weights || !x || !out || n_threads < 1) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "ggml_mul_mat check: n must be a positive multiple of the "
                                                         "type's block size, rows/cols/threads positive, buffers set");
    }
    const size_t w_bytes = ggml_row_size(t, n) * (size_t) rows;
    ggml_init_params ip{};
    ip.mem_size = w_bytes + sizeof(float) * ((size_t) n * cols + (size_t) rows * cols) + ggml_graph_overhead() +
                  8 * ggml_tensor_overhead() + (16 << 20);  // + ggml's work buffer (src1 quantised, tiled's per-thread slots)
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) return sirius::fail(SIRIUS_ERR_INTERNAL, "ggml_init failed");
    ggml_tensor * w = ggml_new_tensor_2d(ctx, t, n, rows);
    ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, cols);
    memcpy(w->data, weights, w_bytes);
    memcpy(a->data, x, sizeof(float) * (size_t) n * cols);
    ggml_tensor * y = ggml_mul_mat(ctx, w, a);  // [rows, cols]
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    const ggml_status st = ggml_graph_compute_with_ctx(ctx, gf, n_threads);
    if (st == GGML_STATUS_SUCCESS) {
        for (int32_t c = 0; c < cols; ++c) memcpy(out + (size_t) c * rows, (const char *) y->data + c * y->nb[1], sizeof(float) * rows);
    }
    ggml_free(ctx);
    return st == GGML_STATUS_SUCCESS ? SIRIUS_OK : sirius::fail(SIRIUS_ERR_INTERNAL, "ggml compute failed");
}
