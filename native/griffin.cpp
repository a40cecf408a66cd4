// Griffin: per prompt, the FFN neurons most active over the prefill (its statistic, collected in sparse.cpp's
// eval callback), gathered once into compact gate/up/down tensors that single-token decodes use instead of the
// model's (patch 0001). Gate and up rows are neurons (exact byte copies); ffn_down's kept columns are requantised.
// The bytes come from the GGUF file itself, not from the loaded tensors, whose CPU layout may be repacked.

#include "sparse.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <strings.h>
#include <thread>

namespace sirius {

namespace {

// Runs fn(i0, i1) on n_threads contiguous slices of [0, n), the calling thread taking the first.
template <typename F> void parallel_for(int32_t n_threads, int64_t n, F && fn) {
    const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(n_threads, n));
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < nt; ++t) pool.emplace_back([&, t] { fn(n * t / nt, n * (t + 1) / nt); });
    fn(0, n / nt);
    for (auto & th : pool) th.join();
}

// The compact down's type for Griffin on single neurons, for a layer whose ffn_down is of type src. Its rows
// hold the kept neurons' columns, so it is requantised. Chosen by measurement on Qwen2.5-Coder-1.5B Q4_K_M
// (ffn_down Q4_K and Q6_K; benchmarks/NOTES.md, "Single-neuron Griffin"): Q4_0 for sources under 8 bits per
// weight (fastest decode, 0.72 s build, acceptance 0.977 at density 0.5), Q8_0 for 8-bit ones, F16 (BF16) for
// float ones (F16 sources lose nothing). Requantising to the original K-quant took 15 s (ggml's scalar reference quantiser).
// SIRIUS_GRIFFIN_DOWN=TYPE (q8_0, q5_0, q4_0, q4_K, q5_K, q6_K, f16, or "orig" for src itself) overrides it
// for measurements; *why is set when its value is unusable.
ggml_type griffin_down_type(ggml_type src, const char ** why) {
    static const ggml_type allowed[] = {GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q5_0, GGML_TYPE_Q4_0,
                                        GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
    *why = nullptr;
    const char * v = getenv("SIRIUS_GRIFFIN_DOWN");
    if (!v || !*v) return requantised_down_type(src);
    if (strcmp(v, "orig") == 0) return src;
    for (ggml_type t : allowed) {
        if (strcasecmp(v, ggml_type_name(t)) == 0) return t;
    }
    *why = "SIRIUS_GRIFFIN_DOWN is not a compact down type: use q8_0, q5_0, q4_0, q4_K, q5_K, q6_K, f16, bf16 or orig";
    return src;
}

// One layer of Griffin's compact FFN: the kept neurons and where their bytes come from and go.
struct GriffinLayer {
    LayerFFN                f;
    const uint8_t *         src[3] = {nullptr, nullptr, nullptr};  // up, gate, down in the mapped GGUF
    std::vector<int32_t>    keep;                                  // kept neurons, ascending
    ggml_type               down_type = GGML_TYPE_COUNT;           // of the compact down
    CompactTensor           c[3];                                  // compact up, gate, down
};

// The kept neurons of a layer: the round(density * n_ff) with the highest statistic, padded to the compact
// down's block with the next-ranked ones (its rows must be whole blocks); ties go to the lower index.
std::vector<int32_t> griffin_keep(const std::vector<double> & acc, float density, int64_t block) {
    const int64_t n_ff = (int64_t) acc.size();
    const int64_t k0 = std::clamp<int64_t>(std::llround(density * n_ff), 1, n_ff);
    const int64_t k = std::min<int64_t>((k0 + block - 1) / block * block, n_ff);
    std::vector<int32_t> order(n_ff);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return acc[a] > acc[b] || (acc[a] == acc[b] && a < b);
    });
    order.resize(k);
    std::sort(order.begin(), order.end());
    return order;
}

// Fills one layer's compact tensors: gate/up rows are neurons (exact byte copies); down [n_ff, n_embd] holds
// neurons inside the quant blocks of each row, so each row is dequantised, its kept columns gathered and
// requantised to the compact type (or copied as is when every neuron is kept).
bool griffin_fill(GriffinLayer & L, std::vector<uint8_t> & staging, std::vector<float> & full, std::vector<float> & part) {
    const int64_t n_embd = L.f.n_embd, n_ff = L.f.n_ff, k = (int64_t) L.keep.size();
    // Plain host memory is written in place; a repacking or GPU buffer converts or uploads from staging.
    auto target = [&](const CompactTensor & c) -> uint8_t * {
        if (ggml_backend_buffer_is_host(c.buf) && !c.t->extra) return static_cast<uint8_t *>(c.t->data);
        staging.resize(ggml_nbytes(c.t));
        return staging.data();
    };
    auto commit = [&](const CompactTensor & c, const uint8_t * data) {
        if (data != c.t->data) ggml_backend_tensor_set(c.t, data, 0, ggml_nbytes(c.t));
    };
    for (int j = 0; j < 2; ++j) {
        const size_t row = ggml_row_size(j == 0 ? L.f.up->type : L.f.gate->type, n_embd);
        uint8_t * dst = target(L.c[j]);
        for (int64_t q = 0; q < k; ++q) memcpy(dst + q * row, L.src[j] + (size_t) L.keep[q] * row, row);
        commit(L.c[j], dst);
    }
    const ggml_type st = L.f.down->type, dt = L.down_type;
    const size_t row = ggml_row_size(st, n_ff), crow = ggml_row_size(dt, k);
    uint8_t * dst = target(L.c[2]);
    if (k == n_ff && dt == st) {
        memcpy(dst, L.src[2], crow * n_embd);
    } else {
        const ggml_to_float_t to_float = ggml_get_type_traits(st)->to_float;
        // ggml-cpu's SIMD quantiser where it has one for the type (Q8_0), else ggml's reference one.
        const ggml_from_float_t from_float = ggml_get_type_traits_cpu(dt)->from_float;
        if (!to_float && st != GGML_TYPE_F32) return false;
        full.resize(n_ff);
        part.resize(k);
        for (int64_t r = 0; r < n_embd; ++r) {
            if (st == GGML_TYPE_F32) {
                memcpy(full.data(), L.src[2] + (size_t) r * row, row);  // (F32 has no to_float)
            } else {
                to_float(L.src[2] + (size_t) r * row, full.data(), n_ff);
            }
            for (int64_t q = 0; q < k; ++q) part[q] = full[L.keep[q]];
            uint8_t * out = dst + (size_t) r * crow;
            if (dt == GGML_TYPE_Q8_0 && from_float) {
                from_float(part.data(), out, k);
            } else if (ggml_quantize_chunk(dt, part.data(), out, 0, 1, k, nullptr) != crow) {
                return false;
            }
        }
    }
    commit(L.c[2], dst);
    return true;
}

// The previous build's compact tensors, reused where a new one has the same buffer type, type and shape (the
// same density on the next prompt): fresh memory costs a page fault per 4 KiB, more than the copy itself.
struct SparePool {
    std::vector<CompactTensor> free;
    int32_t take(const ggml_tensor * like, ggml_type type, int64_t ne0, int64_t ne1, CompactTensor & out) {
        const ggml_backend_buffer_type_t buft = like_buft(like);
        for (size_t i = 0; i < free.size(); ++i) {
            const ggml_tensor * t = free[i].t;
            if (free[i].asked == buft && t->type == type && t->ne[0] == ne0 && t->ne[1] == ne1 && t->ne[2] == 1) {
                out = free[i];
                free.erase(free.begin() + (std::ptrdiff_t) i);
                return SIRIUS_OK;
            }
        }
        return alloc_like(like, type, ne0, ne1, out);
    }
    ~SparePool() {
        for (auto & c : free) {
            if (c.buf) ggml_backend_buffer_free(c.buf);
            if (c.ctx) ggml_free(c.ctx);
        }
    }
};

}  // namespace

// Griffin on single neurons: per layer, the neurons with the highest statistic (griffin_keep), gathered into
// compact gate/up/down tensors (griffin_fill) that single-token decodes use instead of the originals. The
// layers are filled in parallel on the session's threads. (About 90 lines: the plan, the parallel fill and the
// figures share the per-layer allocations, which one function keeps in one place.)
int32_t griffin_build(sirius_session * s, float density, sirius_sparse_info * info) {
    const char * why = nullptr;
    griffin_down_type(GGML_TYPE_F32, &why);
    if (why) return fail(SIRIUS_ERR_INVALID_ARGUMENT, why);
    const auto t0 = std::chrono::steady_clock::now();
    SparePool spare;
    if (s->sparse && s->sparse->sparsity == SIRIUS_SPARSITY_GRIFFIN) spare.free.swap(s->sparse->owned);
    sparse_release(s);

    const llama_model * model = s->model->model;
    const int32_t n_layer = llama_model_n_layer(model);
    auto sp = std::make_unique<SparseFFN>(n_layer);

    const std::shared_ptr<const MappedGGUF> mapped = model_file(s->model);
    if (!mapped) return fail(SIRIUS_ERR_IO, "cannot map the model file for the sparse FFN: " + s->model->path);
    const MappedGGUF & file = *mapped;

    // Plan (this thread): the kept neurons and the compact tensors' allocations, layer by layer.
    std::vector<GriffinLayer> layers;
    layers.reserve(n_layer);
    bool host = true;
    int64_t kept_neurons = 0, total_neurons = 0, ffn_params_skipped = 0, ffn_bytes_replaced = 0;
    for (int32_t il = 0; il < n_layer; ++il) {
        GriffinLayer L;
        if (!layer_ffn(model, il, L.f) || il >= (int32_t) s->griffin_sumsq.size()) continue;  // stays dense
        const auto & acc = s->griffin_sumsq[il];
        const int64_t n_embd = L.f.n_embd, n_ff = L.f.n_ff;
        if ((int64_t) acc.size() != n_ff) continue;
        for (int j = 0; j < 3; ++j) {
            const ggml_tensor * t = j == 0 ? L.f.up : j == 1 ? L.f.gate : L.f.down;
            if (!(L.src[j] = file.tensor(L.f.name[j], ggml_nbytes(t)))) {
                return fail(SIRIUS_ERR_IO, std::string("cannot read ") + L.f.name[j] + " from " + s->model->path);
            }
        }
        L.down_type = griffin_down_type(L.f.down->type, &why);
        if (ggml_blck_size(L.down_type) > n_ff) L.down_type = L.f.down->type;
        L.keep = griffin_keep(acc, density, ggml_blck_size(L.down_type));
        const int64_t k = (int64_t) L.keep.size();
        if (k == n_ff) L.down_type = L.f.down->type;  // every neuron: the original bytes
        int32_t rc = spare.take(L.f.up, L.f.up->type, n_embd, k, L.c[0]);
        if (rc == SIRIUS_OK) sp->owned.push_back(L.c[0]), rc = spare.take(L.f.gate, L.f.gate->type, n_embd, k, L.c[1]);
        if (rc == SIRIUS_OK) sp->owned.push_back(L.c[1]), rc = spare.take(L.f.down, L.down_type, k, n_embd, L.c[2]);
        if (rc != SIRIUS_OK) return rc;  // (sp, holding what was allocated, frees it)
        sp->owned.push_back(L.c[2]);
        for (const CompactTensor & c : L.c) host = host && ggml_backend_buffer_is_host(c.buf);

        sp->table[il] = {L.f.up, L.f.gate, L.f.down, L.c[0].t, L.c[1].t, L.c[2].t};
        sp->groups[il] = L.keep;
        sp->group_size[il] = 1;
        sp->info.n_layers_sparse++;
        sp->info.group_size = 1;
        sp->info.down_type = (int32_t) L.down_type;
        kept_neurons += k;
        total_neurons += n_ff;
        ffn_params_skipped += 3 * n_embd * (n_ff - k);
        ffn_bytes_replaced += (int64_t) (ggml_nbytes(L.f.up) + ggml_nbytes(L.f.gate) + ggml_nbytes(L.f.down));
        layers.push_back(std::move(L));
    }

    // Fill: each thread takes the next unfilled layer. A GPU backend's uploads stay on this thread.
    std::atomic<size_t> next{0};
    std::atomic<bool> ok{true};
    const int32_t n_threads = host ? std::max(1, llama_n_threads(s->ctx)) : 1;
    parallel_for(n_threads, n_threads, [&](int64_t, int64_t) {
        std::vector<uint8_t> staging;
        std::vector<float> full, part;
        for (size_t i; (i = next++) < layers.size() && ok;) {
            if (!griffin_fill(layers[i], staging, full, part)) ok = false;
        }
    });
    if (!ok) return fail(SIRIUS_ERR_INTERNAL, "cannot requantise ffn_down for the compact FFN");

    for (const auto & c : sp->owned) count_bytes(c, sp->info);
    sp->info.density = total_neurons ? (double) kept_neurons / (double) total_neurons : 1.0;
    const double n_params = (double) llama_model_n_params(model);
    sp->info.param_fraction = n_params > 0 ? (n_params - (double) ffn_params_skipped) / n_params : 1.0;
    sp->info.dense_step_bytes = dense_step_bytes(file);
    sp->info.step_bytes = sp->info.dense_step_bytes - ffn_bytes_replaced;
    for (const auto & c : sp->owned) sp->info.step_bytes += (int64_t) ggml_nbytes(c.t);
    sp->info.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (info) *info = sp->info;
    s->sparse = std::move(sp);
    if (s->sparse->info.n_layers_sparse > 0) set_ffn_table(s);
    return SIRIUS_OK;
}

}  // namespace sirius
