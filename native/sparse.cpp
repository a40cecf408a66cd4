// The sparse FFN's common parts: a layer's FFN tensors, where compact tensors are allocated, the table handed to
// llama.cpp (patch 0001), the eval callback (Griffin's statistic, top-k's recorded choices), switching between the
// dense and the sparse FFN, and the C API that builds one by method (griffin.cpp, per_token.cpp).

#include "sparse.h"

#include "ggml-alloc.h"
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

// false: layer il has no gated FFN that splits into groups (it stays dense).
bool layer_ffn(const llama_model * model, int32_t il, LayerFFN & f) {
    snprintf(f.name[0], sizeof(f.name[0]), "blk.%d.ffn_up.weight", il);
    snprintf(f.name[1], sizeof(f.name[1]), "blk.%d.ffn_gate.weight", il);
    snprintf(f.name[2], sizeof(f.name[2]), "blk.%d.ffn_down.weight", il);
    f.up = llama_sirius_model_tensor(model, f.name[0]);
    f.gate = llama_sirius_model_tensor(model, f.name[1]);
    f.down = llama_sirius_model_tensor(model, f.name[2]);
    if (!f.up || !f.gate || !f.down) return false;
    f.n_embd = f.up->ne[0];
    f.n_ff = f.up->ne[1];
    if (f.gate->ne[1] != f.n_ff || f.down->ne[0] != f.n_ff || f.down->ne[1] != f.n_embd) return false;
    f.G = std::max<int64_t>(ggml_blck_size(f.down->type), 32);
    return f.n_ff % f.G == 0 && f.G % ggml_blck_size(f.down->type) == 0;
}

int node_layer(const char * name, std::initializer_list<const char *> prefixes) {
    for (const char * p : prefixes) {
        size_t n = strlen(p);
        if (strncmp(name, p, n) == 0) {
            char * end = nullptr;
            long il = strtol(name + n, &end, 10);
            if (end != name + n && *end == '\0') return (int) il;
        }
    }
    return -1;
}

namespace {

// "ffn_swiglu-12" / "ffn_geglu-3" -> layer index; -1 for any other node.
int ffn_act_layer(const char * name) { return node_layer(name, {"ffn_swiglu-", "ffn_geglu-"}); }

// A CPU extra buffer type (weight repacking), which can hold a shape only if it sets tensor->extra for it: on
// the CPU device, neither the plain nor the mmapped type. (Extra types report is_host false: go by name.)
bool cpu_extra(ggml_backend_buffer_type_t buft) {
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    if (buft == ggml_backend_cpu_buffer_type() || !dev || ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
        return false;
    }
    const char * name = ggml_backend_buft_name(buft);
    return strcmp(name, "CPU") != 0 && strcmp(name, "CPU_Mapped") != 0;
}

// The one CPU extra type the sparse tensors may live in: ggml-cpu's repacking ("CPU_REPACK"), whose kernels
// check each shape (its init_tensor leaves extra unset for a shape it cannot hold) and which mul_mat_id
// supports. Others are refused: AMX (Intel Xeons from Sapphire Rapids on) sets extra for every tensor and then
// runs its kernel on shapes it never checked (a compact FFN crashed in ggml_backend_amx_mul_mat), and supports
// no mul_mat_id, so a view of an AMX tensor has no backend (the scheduler aborts).
}  // namespace

bool sparse_extra(ggml_backend_buffer_type_t buft) {
    return cpu_extra(buft) && strcmp(ggml_backend_buft_name(buft), "CPU_REPACK") == 0;
}

// Allocates one tensor of `type`, shape ne0 x ne1 x ne2, in buft; falls back to the plain CPU buffer type when
// buft is a CPU extra type that cannot take this shape.
int32_t alloc_tensor(ggml_backend_buffer_type_t buft, ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                     CompactTensor & out) {
    ggml_init_params ip = {ggml_tensor_overhead(), nullptr, true};
    if (cpu_extra(buft) && !sparse_extra(buft)) buft = ggml_backend_cpu_buffer_type();
    for (int attempt = 0; attempt < 2; ++attempt) {
        out.ctx = ggml_init(ip);
        out.t = ggml_new_tensor_3d(out.ctx, type, ne0, ne1, ne2);
        out.buf = ggml_backend_alloc_ctx_tensors_from_buft(out.ctx, buft);
        if (!out.buf) {
            ggml_free(out.ctx);
            out = {};
            return fail(SIRIUS_ERR_INTERNAL, std::string("could not allocate a sparse FFN tensor in ") + ggml_backend_buft_name(buft));
        }
        if (!cpu_extra(buft) || out.t->extra != nullptr) {
            return SIRIUS_OK;
        }
        ggml_backend_buffer_free(out.buf);
        ggml_free(out.ctx);
        out = {};
        buft = ggml_backend_cpu_buffer_type();
    }
    return fail(SIRIUS_ERR_INTERNAL, "could not allocate a sparse FFN tensor");
}

// Where a Griffin compact tensor for `like` goes: like's buffer type (a GPU's, for offloaded layers), but plain
// host memory for weights read from the mmapped file or repacked on the CPU. Converting the compact tensors to
// the repacked layout doubled the build (1.16 s against 0.63 s on Qwen2.5-Coder-1.5B at density 0.5, 2 threads)
// and decoded no faster (1.40x against 1.44x dense): benchmarks/NOTES.md, "Single-neuron Griffin".
ggml_backend_buffer_type_t like_buft(const ggml_tensor * like) {
    ggml_backend_buffer_type_t buft = like->buffer ? ggml_backend_buffer_get_type(like->buffer) : ggml_backend_cpu_buffer_type();
    if ((ggml_backend_buft_is_host(buft) && strcmp(ggml_backend_buft_name(buft), "CPU_Mapped") == 0) || cpu_extra(buft)) {
        buft = ggml_backend_cpu_buffer_type();
    }
    return buft;
}

ggml_type requantised_down_type(ggml_type src) {
    if (src == GGML_TYPE_F32 || src == GGML_TYPE_F16 || src == GGML_TYPE_BF16) {
        return src == GGML_TYPE_BF16 ? GGML_TYPE_BF16 : GGML_TYPE_F16;  // float weights stay float
    }
    const double bits = 8.0 * (double) ggml_type_size(src) / (double) ggml_blck_size(src);
    return bits >= 8.0 ? GGML_TYPE_Q8_0 : GGML_TYPE_Q4_0;
}

// Weight bytes one dense decode step reads: every tensor of the GGUF once, except the token embedding (one row),
// unless it doubles as the output head.
int64_t dense_step_bytes(const MappedGGUF & file) {
    const int64_t n = gguf_get_n_tensors(file.g);
    const bool tied = gguf_find_tensor(file.g, "output.weight") < 0;
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (!tied && strcmp(gguf_get_tensor_name(file.g, i), "token_embd.weight") == 0) continue;
        total += (int64_t) gguf_get_tensor_size(file.g, i);
    }
    return total;
}

void count_bytes(const CompactTensor & c, sirius_sparse_info & info) {
    const int64_t n = (int64_t) ggml_backend_buffer_get_size(c.buf);
    info.bytes += n;
    if (!ggml_backend_buffer_is_host(c.buf)) info.device_bytes += n;
}

// A tensor of `type`, shape ne0 x ne1, in like_buft(like) (as alloc_tensor places it).
int32_t alloc_like(const ggml_tensor * like, ggml_type type, int64_t ne0, int64_t ne1, CompactTensor & out) {
    const ggml_backend_buffer_type_t buft = like_buft(like);
    const int32_t rc = alloc_tensor(buft, type, ne0, ne1, 1, out);
    out.asked = buft;
    return rc;
}

std::shared_ptr<const MappedGGUF> model_file(sirius_model * m) {
    std::lock_guard<std::mutex> lock(m->file_mu);
    if (!m->file) {
        auto f = std::make_shared<MappedGGUF>();
        if (!f->open(m->path, true)) return nullptr;
        m->file = std::move(f);
    }
    return m->file;
}

SparseFFN::~SparseFFN() {
    for (auto & c : owned) {
        if (c.buf) ggml_backend_buffer_free(c.buf);
        if (c.ctx) ggml_free(c.ctx);
    }
    for (auto & c : views) {
        if (c.buf) ggml_backend_buffer_free(c.buf);
        if (c.ctx) ggml_free(c.ctx);
    }
}

bool eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * s = static_cast<sirius_session *>(user_data);
    const int topk_il = s->record_topk && t->type == GGML_TYPE_I32 ? node_layer(t->name, {"ffn_topk_ids-"}) : -1;
    if (topk_il >= 0) {
        if (ask) return true;
        const int il = topk_il;
        if (il < (int) s->topk_ids.size()) {
            std::vector<int32_t> & ids = s->topk_ids[il];
            ids.resize(t->ne[0]);
            ggml_backend_tensor_get(t, ids.data(), 0, ids.size() * sizeof(int32_t));  // first token's row
            std::sort(ids.begin(), ids.end());
        }
        return true;
    }
    if (!s->collect) return false;
    const int il = ffn_act_layer(t->name);
    if (il < 0 || il >= (int) s->griffin_sumsq.size() || t->type != GGML_TYPE_F32) return false;
    if (ask) return true;

    const int64_t n_ff = t->ne[0], n_tok = t->ne[1] * t->ne[2] * t->ne[3];
    auto & acc = s->griffin_sumsq[il];
    if ((int64_t) acc.size() != n_ff) acc.assign(n_ff, 0.0);
    const bool host = t->buffer && ggml_backend_buffer_is_host(t->buffer);
    for (int64_t r = 0; r < n_tok; ++r) {
        const float * z;
        const size_t off = (size_t) r * t->nb[1];
        if (host) {
            z = reinterpret_cast<const float *>(static_cast<const char *>(t->data) + off);
        } else {  // a GPU backend: copy the row out
            s->scratch.resize(n_ff);
            ggml_backend_tensor_get(t, s->scratch.data(), off, n_ff * sizeof(float));
            z = s->scratch.data();
        }
        double nrm = 0.0;
        for (int64_t i = 0; i < n_ff; ++i) nrm += (double) z[i] * z[i];
        if (nrm <= 0.0) continue;
        const double inv = 1.0 / nrm;
        for (int64_t i = 0; i < n_ff; ++i) acc[i] += (double) z[i] * z[i] * inv;
    }
    if (il == 0) s->griffin_tokens += (int32_t) n_tok;
    return true;
}

void set_ffn_table(sirius_session * s) {
    if (!s->sparse || s->sparse->table.empty()) {
        llama_sirius_set_ffn(s->ctx, 0, nullptr);
        return;
    }
    std::vector<ggml_tensor *> flat;  // the patch's layout: six pointers per layer (it copies them)
    for (const FFNOverride & o : s->sparse->table) {
        flat.insert(flat.end(), {o.up, o.gate, o.down, o.sparse_up, o.sparse_gate, o.sparse_down});
    }
    llama_sirius_set_ffn(s->ctx, (int32_t) s->sparse->table.size(), flat.data());
}

void sparse_release(sirius_session * s) {
    if (s->sparse) {
        llama_sirius_set_ffn_topk(s->ctx, 0, nullptr);
        llama_sirius_set_ffn(s->ctx, 0, nullptr);
        s->sparse.reset();
        neuron_ffn_sync(s);
    }
    head_release(s);
    s->sparse_on = false;
    llama_sirius_set_ffn_sparse(s->ctx, false);
}

int32_t set_ffn_mode(sirius_session * s, int32_t mode) {
    if (mode != SIRIUS_MODE_DENSE && mode != SIRIUS_MODE_SPARSE) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown FFN mode " + std::to_string(mode));
    }
    if (mode == SIRIUS_MODE_SPARSE && !s->sparse) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "no sparse FFN is built for this session: call sirius_sparse_build first");
    }
    s->sparse_on = mode == SIRIUS_MODE_SPARSE;
    llama_sirius_set_ffn_sparse(s->ctx, s->sparse_on);
    return SIRIUS_OK;
}

int32_t sparse_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info) {
    if (sparsity != SIRIUS_SPARSITY_GRIFFIN && sparsity != SIRIUS_SPARSITY_TOPK && sparsity != SIRIUS_SPARSITY_THRESHOLD) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "unknown sparsity method " + std::to_string(sparsity));
    }
    if (!(density > 0.0f && density <= 1.0f)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "density must be in (0, 1], got " + std::to_string(density));
    }
    if (sparsity != SIRIUS_SPARSITY_GRIFFIN) return per_token_build(s, sparsity, density, info);
    if (s->griffin_tokens <= 0) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "no Griffin statistic: evaluate a prompt with sirius_griffin_collect on first");
    }
    return griffin_build(s, density, info);
}

}  // namespace sirius

sirius_session::sirius_session() = default;
sirius_session::~sirius_session() = default;

void sirius::griffin_set_collect(sirius_session * s, bool collect, bool reset) {
    if (reset) {
        s->griffin_sumsq.assign(llama_model_n_layer(s->model->model), {});
        s->griffin_tokens = 0;
        s->griffin_upto = 0;
        head_reset_statistic(s);
    }
    s->collect = collect;
    // The callback exists only while collecting (or recording): other batches run exactly as stock llama.cpp does.
    const bool on = collect || s->record_topk;
    llama_sirius_set_eval_callback(s->ctx, on ? sirius::eval_callback : nullptr, on ? s : nullptr);
}

extern "C" {

int32_t sirius_griffin_collect(sirius_session * s, int32_t collect) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    sirius::griffin_set_collect(s, collect != 0, collect != 0);
    s->griffin_upto = 0;  // collected by hand: not tied to a prefix sirius_generate knows
    return SIRIUS_OK;
}

int64_t sirius_model_step_bytes(sirius_model * m) {
    if (!m) return -1;
    const auto file = sirius::model_file(m);
    return file ? sirius::dense_step_bytes(*file) : -1;
}

int32_t sirius_sparse_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    return sirius::sparse_build(s, sparsity, density, info);
}

int32_t sirius_set_ffn_mode(sirius_session * s, int32_t mode) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    return sirius::set_ffn_mode(s, mode);
}

void sirius_sparse_release(sirius_session * s) {
    if (s) sirius::sparse_release(s);
}

int32_t sirius_test_topk_record(sirius_session * s, int32_t record) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    s->record_topk = record != 0;
    s->topk_ids.assign(llama_model_n_layer(s->model->model), {});
    sirius::griffin_set_collect(s, s->collect, false);  // (re)installs or removes the callback
    return SIRIUS_OK;
}

int32_t sirius_test_topk_kept(const sirius_session * s, int32_t il, int32_t * out, int32_t n_max) {
    if (!s || il < 0 || il >= (int32_t) s->topk_ids.size()) return -1;
    const auto & ids = s->topk_ids[il];
    if (out) std::copy_n(ids.begin(), std::min<size_t>(ids.size(), (size_t) std::max(n_max, 0)), out);
    return (int32_t) ids.size();
}

int32_t sirius_test_griffin_scores(const sirius_session * s, int32_t il, float * out, int32_t n_max) {
    if (!s || il < 0 || il >= (int32_t) s->griffin_sumsq.size()) return 0;
    const auto & acc = s->griffin_sumsq[il];
    for (int32_t i = 0; i < (int32_t) acc.size() && i < n_max && out; ++i) out[i] = (float) std::sqrt(acc[i]);
    return (int32_t) acc.size();
}

int32_t sirius_test_sparse_groups(const sirius_session * s, int32_t il, int32_t * groups, int32_t n_max, int32_t * group_size) {
    if (!s || !s->sparse || il < 0 || il >= (int32_t) s->sparse->groups.size() || s->sparse->groups[il].empty()) return -1;
    const auto & g = s->sparse->groups[il];
    for (int32_t i = 0; i < (int32_t) g.size() && i < n_max && groups; ++i) groups[i] = g[i];
    if (group_size) *group_size = s->sparse->group_size[il];
    return (int32_t) g.size();
}

}  // extern "C"
