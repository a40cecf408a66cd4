// Runs one ggml-cpu matrix product or flash attention on caller data, so tests can hold each of ggml's CPU paths
// (vec_dot per column, the patched small-batch kernels, tiled, the repacked layouts; attention's one-token split-KV
// path and patch 0006's verify rows) against a NumPy reference and each other. Not used by generation.

#include "sirius.h"
#include "internal.h"
#include "sparse.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <cstring>
#include <string>

namespace {

// CPU_REPACK, llama.cpp's default home for CPU weights (use_extra_bufts), or null where this build has none
ggml_backend_buffer_type_t repack_buffer_type(ggml_backend_dev_t dev) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    auto get_extra = (ggml_backend_dev_get_extra_bufts_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t * b = get_extra ? get_extra(dev) : nullptr; b && *b; ++b) {
        if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    }
    return nullptr;
}

// The weights repacked as llama.cpp loads them (setting the tensor repacks it), the product run by the CPU backend
int32_t mul_mat_repacked(ggml_type t, int32_t n, int32_t rows, int32_t cols, const void * weights, const float * x,
                         float * out, int32_t n_threads) {
    ggml_backend_t be = ggml_backend_cpu_init();
    if (!be) return sirius::fail(SIRIUS_ERR_INTERNAL, "ggml_backend_cpu_init failed");
    ggml_backend_cpu_set_n_threads(be, n_threads);
    ggml_backend_buffer_type_t buft = repack_buffer_type(ggml_backend_get_device(be));
    ggml_init_params ip = {8 * ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true};
    ggml_context * wctx = ggml_init(ip);
    ggml_context * ctx = ggml_init(ip);
    ggml_backend_buffer_t wbuf = nullptr, buf = nullptr;
    int32_t rc = SIRIUS_OK;
    ggml_tensor * w = ggml_new_tensor_2d(wctx, t, n, rows);
    ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, cols);
    ggml_tensor * y = ggml_mul_mat(ctx, w, a);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    if (!buft || !(wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft)) || w->extra == nullptr) {
        rc = sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, std::string("ggml_mul_mat check: this build does not repack ") +
                                                          ggml_type_name(t) + " x " + std::to_string(rows) + " rows on this CPU");
    } else if (!(buf = ggml_backend_alloc_ctx_tensors(ctx, be))) {
        rc = sirius::fail(SIRIUS_ERR_INTERNAL, "could not allocate the product's buffers");
    } else {
        ggml_backend_tensor_set(w, weights, 0, ggml_nbytes(w));
        ggml_backend_tensor_set(a, x, 0, ggml_nbytes(a));
        if (ggml_backend_graph_compute(be, gf) != GGML_STATUS_SUCCESS) {
            rc = sirius::fail(SIRIUS_ERR_INTERNAL, "ggml compute failed");
        } else {
            for (int32_t c = 0; c < cols; ++c) ggml_backend_tensor_get(y, out + (size_t) c * rows, c * y->nb[1], sizeof(float) * rows);
        }
    }
    if (buf) ggml_backend_buffer_free(buf);
    if (wbuf) ggml_backend_buffer_free(wbuf);
    ggml_free(ctx);
    ggml_free(wctx);
    ggml_backend_free(be);
    return rc;
}

}  // namespace

extern "C" int32_t sirius_test_ggml_mul_mat(int32_t type, int32_t n, int32_t rows, int32_t cols, const void * weights,
                                       const float * x, float * out, int32_t n_threads, int32_t repack) {
    if (type < 0 || type >= GGML_TYPE_COUNT || !ggml_get_type_traits((ggml_type) type)->type_name) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown ggml type " + std::to_string(type));
    }
    const ggml_type t = (ggml_type) type;
    if (n <= 0 || rows <= 0 || cols <= 0 || n % ggml_blck_size(t) != 0 || !weights || !x || !out || n_threads < 1) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "ggml_mul_mat check: n must be a positive multiple of the "
                                                         "type's block size, rows/cols/threads positive, buffers set");
    }
    if (repack) return mul_mat_repacked(t, n, rows, cols, weights, x, out, n_threads);
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

extern "C" int32_t sirius_test_ggml_flash_attn(int32_t dk, int32_t dv, int32_t n_q, int32_t n_head, int32_t n_head_kv,
                                          int32_t n_kv, const float * q, const float * k, const float * v,
                                          const float * mask, float scale, float * out, int32_t n_threads) {
    if (dk <= 0 || dv <= 0 || n_q <= 0 || n_kv <= 0 || n_head_kv <= 0 || n_head <= 0 || n_head % n_head_kv != 0 ||
        !q || !k || !v || !mask || !out || n_threads < 1) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "ggml_flash_attn check: sizes and threads must be positive, "
                                                         "n_head a multiple of n_head_kv, buffers set");
    }
    const size_t nq = (size_t) dk * n_q * n_head, nk = (size_t) dk * n_kv * n_head_kv, nv = (size_t) dv * n_kv * n_head_kv;
    const size_t nm = (size_t) n_kv * n_q, no = (size_t) dv * n_head * n_q;
    ggml_init_params ip{};
    ip.mem_size = sizeof(float) * (nq + no) + sizeof(ggml_fp16_t) * (nk + nv + nm) + ggml_graph_overhead() +
                  8 * ggml_tensor_overhead() + (64 << 20);  // + ggml's work buffer (per-thread tiles, split-KV partials)
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) return sirius::fail(SIRIUS_ERR_INTERNAL, "ggml_init failed");
    ggml_tensor * tq = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, dk, n_q, n_head);
    ggml_tensor * tk = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, dk, n_kv, n_head_kv);
    ggml_tensor * tv = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, dv, n_kv, n_head_kv);
    ggml_tensor * tm = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_kv, n_q);
    memcpy(tq->data, q, sizeof(float) * nq);
    ggml_fp32_to_fp16_row(k, (ggml_fp16_t *) tk->data, (int64_t) nk);
    ggml_fp32_to_fp16_row(v, (ggml_fp16_t *) tv->data, (int64_t) nv);
    ggml_fp32_to_fp16_row(mask, (ggml_fp16_t *) tm->data, (int64_t) nm);
    ggml_tensor * y = ggml_flash_attn_ext(ctx, tq, tk, tv, tm, scale, 0.0f, 0.0f);  // [dv, n_head, n_q]
    ggml_prec_set_acc(y, GGML_PREC_F32);  // as llama.cpp's build_attn_mha sets it
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    const ggml_status st = ggml_graph_compute_with_ctx(ctx, gf, n_threads);
    if (st == GGML_STATUS_SUCCESS) memcpy(out, y->data, sizeof(float) * no);
    ggml_free(ctx);
    return st == GGML_STATUS_SUCCESS ? SIRIUS_OK : sirius::fail(SIRIUS_ERR_INTERNAL, "ggml compute failed");
}

extern "C" int32_t sirius_test_ggml_neuron_ffn(int32_t up_type, int32_t down_type, int32_t n_embd, int32_t n_ff,
                                          const void * up, const void * down_nm, const float * a, const float * x,
                                          int32_t k, float threshold, int32_t n_threads, float * y, int32_t * kept,
                                          int32_t * n_kept) {
    for (int32_t t : {up_type, down_type}) {
        if (t < 0 || t >= GGML_TYPE_COUNT || !ggml_get_type_traits((ggml_type) t)->type_name) {
            return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown ggml type " + std::to_string(t));
        }
    }
    const ggml_type ut = (ggml_type) up_type, dt = (ggml_type) down_type;
    if (n_embd <= 0 || n_ff <= 0 || n_embd % 32 != 0 || n_embd % ggml_blck_size(ut) != 0 || k < 0 || k > n_ff ||
        !(threshold >= 0.0f) || !up || !down_nm || !a || !x || !y || n_threads < 1) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "neuron_ffn check: n_embd must be a positive multiple of 32 and "
                                                         "of up's block, 0 <= k <= n_ff, threshold >= 0, buffers set");
    }
    const size_t up_bytes = ggml_row_size(ut, n_embd) * (size_t) n_ff, down_bytes = ggml_row_size(dt, n_embd) * (size_t) n_ff;
    ggml_init_params ip{};
    ip.mem_size = up_bytes + down_bytes + sizeof(float) * (4 * (size_t) n_ff + 2 * (size_t) n_embd + 64) +
                  ggml_graph_overhead() + 8 * ggml_tensor_overhead() + (1 << 20);
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) return sirius::fail(SIRIUS_ERR_INTERNAL, "ggml_init failed");
    ggml_tensor * tu = ggml_new_tensor_2d(ctx, ut, n_embd, n_ff);
    ggml_tensor * td = ggml_new_tensor_2d(ctx, dt, n_embd, n_ff);
    ggml_tensor * ta = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n_ff);
    ggml_tensor * tx = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n_embd);
    memcpy(tu->data, up, up_bytes);
    memcpy(td->data, down_nm, down_bytes);
    memcpy(ta->data, a, sizeof(float) * n_ff);
    memcpy(tx->data, x, sizeof(float) * n_embd);
    sirius::NeuronLayer L;
    L.up = tu;
    L.down = td;
    L.k = k;
    L.threshold = threshold;
    ggml_tensor * out = sirius::neuron_ffn_nodes(ctx, ta, tx, &L);
    if (!out) {
        ggml_free(ctx);
        return sirius::fail(SIRIUS_ERR_UNSUPPORTED, std::string("no neuron-major kernel for ") + ggml_type_name(dt));
    }
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    const ggml_status st = ggml_graph_compute_with_ctx(ctx, gf, n_threads);
    if (st == GGML_STATUS_SUCCESS) {
        memcpy(y, out->data, sizeof(float) * n_embd);
        const int32_t * ids = nullptr;
        const int32_t count = sirius::neuron_nodes_kept(out, &ids);
        if (n_kept) *n_kept = count;
        if (kept) memcpy(kept, ids, sizeof(int32_t) * count);
    }
    ggml_free(ctx);
    return st == GGML_STATUS_SUCCESS ? SIRIUS_OK : sirius::fail(SIRIUS_ERR_INTERNAL, "ggml compute failed");
}
