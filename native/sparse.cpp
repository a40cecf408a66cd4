// The sparse FFN, Griffin flavour: neuron groups chosen per prompt from the dense prefill's FFN activations,
// gathered once into compact gate/up/down tensors that single-token decodes use instead of the originals
// (patches/0001-sirius-ffn-override.patch). Stock kernels run on the compact tensors, so the saving is real
// (fewer weight bytes per token) on every backend.
//
// Layout facts the gather relies on (ggml shapes, ne0 first):
//   gate, up  [n_embd, n_ff]: one neuron = one quantised row  -> a group of G neurons = G contiguous rows;
//   down      [n_ff, n_embd]: neurons run along each row, inside quant blocks of ggml_blck_size(type)
//             -> with G = that block size, a group is one block in every row: exact byte copies, no requantisation.
// The bytes come from the GGUF file itself, not from the loaded tensors, whose CPU layout may be repacked.

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

namespace {

// "ffn_swiglu-12" / "ffn_geglu-3" -> layer index; -1 for any other node.
int ffn_act_layer(const char * name) {
    static const char * prefixes[] = {"ffn_swiglu-", "ffn_geglu-"};
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

}  // namespace

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
    if (s->record_topk && strncmp(t->name, "ffn_topk_ids-", 13) == 0 && t->type == GGML_TYPE_I32) {
        if (ask) return true;
        const int il = atoi(t->name + 13);
        if (il >= 0 && il < (int) s->topk_ids.size()) {
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

namespace {

// The CPU repacking buffer type that holds t, or nullptr if t is elsewhere (plain, mapped, AMX, a GPU).
ggml_backend_buffer_type_t repack_buft(const ggml_tensor * t) {
    return t->buffer && sparse_extra(ggml_backend_buffer_get_type(t->buffer)) ? ggml_backend_buffer_get_type(t->buffer) : nullptr;
}

// Whether layer il's FFN weights all live on the CPU (where the single-neuron kernels run).
bool ffn_on_cpu(const LayerFFN & f) {
    for (const ggml_tensor * t : {f.up, f.gate, f.down}) {
        ggml_backend_dev_t dev = t->buffer ? ggml_backend_buft_get_device(ggml_backend_buffer_get_type(t->buffer)) : nullptr;
        if (dev && ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) return false;
    }
    return true;
}

// A CPU tensor `what` of `type`, ne0 x ne1 x ne2, over bytes already in memory (a mapping), held in out (the
// caller keeps out, on failure too, so its context and buffer are freed with the others).
int32_t tensor_over(const uint8_t * data, ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2, const char * what,
                    CompactTensor & out) {
    const size_t n = ggml_row_size(type, ne0) * (size_t) (ne1 * ne2);
    if (reinterpret_cast<uintptr_t>(data) % kTensorAlign != 0) {  // ggml_backend_cpu_buffer_from_ptr aborts on it
        return fail(SIRIUS_ERR_UNSUPPORTED, std::string(what) + " is not " + std::to_string(kTensorAlign) +
                                                "-byte aligned in memory (a GGUF with general.alignment below that?); "
                                                "per-token sparsity cannot read it in place");
    }
    ggml_init_params ip = {ggml_tensor_overhead(), nullptr, true};
    out.ctx = ggml_init(ip);
    out.buf = ggml_backend_cpu_buffer_from_ptr(const_cast<uint8_t *>(data), n);
    if (!out.ctx || !out.buf) return fail(SIRIUS_ERR_INTERNAL, std::string("could not wrap ") + what + " in a CPU buffer");
    out.t = ggml_new_tensor_3d(out.ctx, type, ne0, ne1, ne2);
    if (ggml_backend_tensor_alloc(out.buf, out.t, const_cast<uint8_t *>(data)) != GGML_STATUS_SUCCESS) {
        return fail(SIRIUS_ERR_INTERNAL, std::string("could not place ") + what + " in its CPU buffer");
    }
    return SIRIUS_OK;
}

// Patch 0002's group layout for a layer that cannot run on single neurons (its weights on a GPU; or every layer
// with SIRIUS_PER_TOKEN_GROUPS=1, for comparisons): up as [n_embd, G, n_groups], a 3-D view of the model's own
// tensor (repacking interleaves rows in runs of 8 and G is a multiple of 8, so each group of G rows is a
// self-contained repacked matrix, which mul_mat_id's repacked path reads per expert; the view gets the same
// kernels), and a block-major copy of down [G, n_embd, n_groups] (group b's quant block from every row,
// contiguous) in down's buffer type.
int32_t group_layer(SparseFFN & sp, const MappedGGUF & file, const LayerFFN & f, ggml_tensor *& up3, ggml_tensor *& down3) {
    const int64_t n_embd = f.n_embd, n_ff = f.n_ff, G = f.G, nb = n_ff / G;
    CompactTensor v;
    ggml_init_params ip = {ggml_tensor_overhead(), nullptr, true};
    v.ctx = ggml_init(ip);
    up3 = ggml_view_3d(v.ctx, f.up, n_embd, G, nb, f.up->nb[1], (size_t) G * f.up->nb[1], 0);
    const bool ok = ggml_backend_view_init(up3) == GGML_STATUS_SUCCESS && (!repack_buft(f.up) || up3->extra != nullptr);
    sp.views.push_back(v);
    if (!ok) {  // a repacked up whose view has no kernels: the file layout, read in place
        const uint8_t * src = file.tensor(f.name[0], ggml_nbytes(f.up));
        if (!src) return fail(SIRIUS_ERR_IO, std::string("cannot read ") + f.name[0] + " from the model file");
        CompactTensor c;
        const int32_t rc = tensor_over(src, f.up->type, n_embd, G, nb, f.name[0], c);
        sp.views.push_back(c);
        if (rc != SIRIUS_OK) return rc;
        up3 = c.t;
    }
    const uint8_t * down_src = file.tensor(f.name[2], ggml_nbytes(f.down));
    if (!down_src) return fail(SIRIUS_ERR_IO, std::string("cannot read ") + f.name[2] + " from the model file");
    const size_t row = ggml_row_size(f.down->type, n_ff), blk = ggml_row_size(f.down->type, G);
    std::vector<uint8_t> staging(ggml_nbytes(f.down));
    for (int64_t b = 0; b < nb; ++b) {
        for (int64_t r = 0; r < n_embd; ++r) {
            memcpy(staging.data() + ((size_t) b * n_embd + r) * blk, down_src + (size_t) r * row + (size_t) b * blk, blk);
        }
    }
    CompactTensor c;
    ggml_backend_buffer_type_t dbuft = repack_buft(f.down);
    if (int32_t rc = alloc_tensor(dbuft ? dbuft : like_buft(f.down), f.down->type, G, n_embd, nb, c)) return rc;
    sp.owned.push_back(c);
    ggml_backend_tensor_set(c.t, staging.data(), 0, staging.size());  // a repacking buffer converts as it stores
    down3 = c.t;
    return SIRIUS_OK;
}

// SIRIUS_NEURON_RUN=R (measurements): top-k chooses runs of R consecutive neurons instead of single ones, where
// R divides n_ff.
int64_t neuron_run(int64_t n_ff) {
    const char * v = getenv("SIRIUS_NEURON_RUN");
    const int64_t r = v ? std::max<int64_t>(1, atoll(v)) : 1;
    return n_ff % r == 0 ? r : 1;
}

// Top-k and threshold: per token, the FFN computes only the neurons it selects. Layers on the CPU run on single
// neurons (neuron_ffn.cpp's kernels through patch 0003's builder): up read in place from the mapped GGUF, down
// from the model's neuron-major copy (neuron_down.cpp). Other layers keep whole groups of G neurons through
// patch 0002's mul_mat_id graph (group_layer): top-k keeps round(density * n_groups) of them, and threshold does
// the same at its calibration's density (a threshold's varying count has no fixed-shape graph). Built once per
// session; a new density or threshold changes only k.
int32_t per_token_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info) {
    const auto t0 = std::chrono::steady_clock::now();
    const llama_model * model = s->model->model;
    const int32_t n_layer = llama_model_n_layer(model);
    const bool threshold = sparsity == SIRIUS_SPARSITY_THRESHOLD;
    if (threshold && (int32_t) s->thresholds.size() != n_layer) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "no per-layer thresholds are set for this session: calibrate them "
                                                 "(sirius-local calibrate MODEL --density D) and set them first");
    }
    const char * groups_env = getenv("SIRIUS_PER_TOKEN_GROUPS");
    const bool all_groups = groups_env && strcmp(groups_env, "1") == 0;
    if (!s->sparse || (s->sparse->sparsity != SIRIUS_SPARSITY_TOPK && s->sparse->sparsity != SIRIUS_SPARSITY_THRESHOLD) ||
        s->sparse->all_groups != all_groups) {
        sparse_release(s);
        auto sp = std::make_unique<SparseFFN>();
        sp->table.assign((size_t) n_layer * 6, nullptr);
        sp->groups.assign(n_layer, {});
        sp->group_size.assign(n_layer, 0);
        sp->topk_blocks.assign(n_layer, 0);
        sp->neurons.resize(n_layer);
        sp->info.n_layers = n_layer;
        sp->file = model_file(s->model);
        if (!sp->file) return fail(SIRIUS_ERR_IO, "cannot map the model file for the sparse FFN: " + s->model->path);
        sp->all_groups = all_groups;
        std::vector<LayerFFN> layers(n_layer);
        std::vector<bool> valid(n_layer, false), single(n_layer, false);
        for (int32_t il = 0; il < n_layer; ++il) {
            valid[il] = layer_ffn(model, il, layers[il]);
            single[il] = valid[il] && !all_groups && ffn_on_cpu(layers[il]) && layers[il].n_embd % 32 == 0;
        }
        if (std::find(single.begin(), single.end(), true) != single.end()) {
            if (int32_t rc = neuron_down(s->model, std::max(1, llama_n_threads(s->ctx)), sp->down_nm)) return rc;
        }
        for (int32_t il = 0; il < n_layer; ++il) {
            if (!valid[il]) continue;  // stays dense
            const LayerFFN & f = layers[il];
            ggml_tensor ** row6 = &sp->table[(size_t) il * 6];
            row6[0] = f.up; row6[1] = f.gate; row6[2] = f.down;
            if (single[il] && sp->down_nm->rows[il]) {
                // Entries 3-5 are the layer's own tensors: were the builder ever to decline, patch 0001 would
                // substitute them, which is the dense FFN.
                row6[3] = f.up; row6[4] = f.gate; row6[5] = f.down;
                const uint8_t * up_src = sp->file->tensor(f.name[0], ggml_nbytes(f.up));
                if (!up_src) return fail(SIRIUS_ERR_IO, std::string("cannot read ") + f.name[0] + " from " + s->model->path);
                CompactTensor u, d;
                const uint8_t * down_src = sp->down_nm->rows[il];
                int32_t rc = tensor_over(up_src, f.up->type, f.n_embd, f.n_ff, 1, f.name[0], u);
                sp->views.push_back(u);
                if (rc == SIRIUS_OK) rc = tensor_over(down_src, sp->down_nm->type, f.n_embd, f.n_ff, 1, "the neuron-major ffn_down", d);
                sp->views.push_back(d);
                if (rc != SIRIUS_OK) return rc;
                auto L = std::make_unique<NeuronLayer>();
                L->s = s;
                L->il = il;
                L->up = u.t;
                L->down = d.t;
                sp->neurons[il] = std::move(L);
                sp->group_size[il] = 1;
            } else {
                ggml_tensor * up3 = nullptr, * down3 = nullptr;
                if (int32_t rc = group_layer(*sp, *sp->file, f, up3, down3)) return rc;
                row6[3] = up3; row6[4] = f.gate; row6[5] = down3;
                sp->group_size[il] = (int32_t) f.G;
            }
        }
        s->sparse = std::move(sp);
        llama_sirius_set_ffn(s->ctx, n_layer, s->sparse->table.data());
    }
    SparseFFN & sp = *s->sparse;
    sp.sparsity = sparsity;
    int64_t kept = 0, total = 0, skipped = 0, dense_ffn_bytes = 0;
    double sparse_ffn_bytes = 0.0;
    sp.info.n_layers_sparse = 0;
    sp.info.group_size = 0;
    sp.info.down_type = -1;
    for (int32_t il = 0; il < n_layer; ++il) {
        const int64_t G = sp.group_size[il];
        LayerFFN f;
        if (G == 0 || !layer_ffn(model, il, f)) continue;
        const int64_t n = f.n_ff / G;  // units a token chooses among
        const int64_t k = std::clamp<int64_t>(std::llround(density * n), 1, n);
        NeuronLayer * L = sp.neurons[il].get();
        if (L) {
            L->run = neuron_run(f.n_ff);
            L->k = threshold ? 0 : k;
            L->threshold = threshold ? s->thresholds[il] : 0.0f;
            sp.info.down_type = (int32_t) L->down->type;
        }
        sp.topk_blocks[il] = L ? 0 : (int32_t) k;
        sp.info.n_layers_sparse++;
        sp.info.group_size = std::max<int32_t>(sp.info.group_size, (int32_t) (L && !threshold ? L->run : G));
        // Threshold: the expected count (the calibration's density; each token keeps its own number).
        kept += k * G;
        total += n * G;
        skipped += 2 * f.n_embd * (n - k) * G;  // up and down rows of the skipped neurons (gate is dense)
        dense_ffn_bytes += (int64_t) (ggml_nbytes(f.up) + ggml_nbytes(f.down));
        sparse_ffn_bytes += (double) k / (double) n * (double) (ggml_nbytes(f.up) + (L ? ggml_nbytes(L->down) : ggml_nbytes(f.down)));
    }
    llama_sirius_set_ffn_topk(s->ctx, n_layer, sp.topk_blocks.data());
    neuron_ffn_sync(s);
    sp.info.bytes = sp.down_nm ? sp.down_nm->bytes : 0;
    for (const auto & c : sp.owned) count_bytes(c, sp.info);
    sp.info.density = total ? (double) kept / (double) total : 1.0;
    const double n_params = (double) llama_model_n_params(model);
    sp.info.param_fraction = n_params > 0 ? (n_params - (double) skipped) / n_params : 1.0;
    // Bytes a decode reads: the kept share of up and of the down it reads (gate is read in full).
    sp.info.dense_step_bytes = dense_step_bytes(*sp.file);
    sp.info.step_bytes = sp.info.dense_step_bytes - dense_ffn_bytes + (int64_t) sparse_ffn_bytes;
    sp.info.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (info) *info = sp.info;
    return SIRIUS_OK;
}

}  // namespace

namespace {

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

// Griffin on single neurons: per layer, the neurons with the highest statistic (griffin_keep), gathered into
// compact gate/up/down tensors (griffin_fill) that single-token decodes use instead of the originals. The
// layers are filled in parallel on the session's threads.
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
    auto sp = std::make_unique<SparseFFN>();
    sp->table.assign((size_t) n_layer * 6, nullptr);
    sp->groups.assign(n_layer, {});
    sp->group_size.assign(n_layer, 0);
    sp->info.n_layers = n_layer;
    sp->info.down_type = -1;

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

        ggml_tensor ** row6 = &sp->table[(size_t) il * 6];
        row6[0] = L.f.up; row6[1] = L.f.gate; row6[2] = L.f.down;
        row6[3] = L.c[0].t; row6[4] = L.c[1].t; row6[5] = L.c[2].t;
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
    if (sp->info.n_layers_sparse > 0) {
        llama_sirius_set_ffn(s->ctx, n_layer, sp->table.data());
    }
    if (info) *info = sp->info;
    s->sparse = std::move(sp);
    return SIRIUS_OK;
}

}  // namespace

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

int32_t sirius_topk_record(sirius_session * s, int32_t record) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    s->record_topk = record != 0;
    s->topk_ids.assign(llama_model_n_layer(s->model->model), {});
    sirius::griffin_set_collect(s, s->collect, false);  // (re)installs or removes the callback
    return SIRIUS_OK;
}

int32_t sirius_topk_groups(const sirius_session * s, int32_t il, int32_t * out, int32_t n_max) {
    if (!s || il < 0 || il >= (int32_t) s->topk_ids.size()) return -1;
    const auto & ids = s->topk_ids[il];
    if (out) std::copy_n(ids.begin(), std::min<size_t>(ids.size(), (size_t) std::max(n_max, 0)), out);
    return (int32_t) ids.size();
}

int32_t sirius_griffin_scores(const sirius_session * s, int32_t il, float * out, int32_t n_max) {
    if (!s || il < 0 || il >= (int32_t) s->griffin_sumsq.size()) return 0;
    const auto & acc = s->griffin_sumsq[il];
    for (int32_t i = 0; i < (int32_t) acc.size() && i < n_max && out; ++i) out[i] = (float) std::sqrt(acc[i]);
    return (int32_t) acc.size();
}

int32_t sirius_sparse_groups(const sirius_session * s, int32_t il, int32_t * groups, int32_t n_max, int32_t * group_size) {
    if (!s || !s->sparse || il < 0 || il >= (int32_t) s->sparse->groups.size() || s->sparse->groups[il].empty()) return -1;
    const auto & g = s->sparse->groups[il];
    for (int32_t i = 0; i < (int32_t) g.size() && i < n_max && groups; ++i) groups[i] = g[i];
    if (group_size) *group_size = s->sparse->group_size[il];
    return (int32_t) g.size();
}

}  // extern "C"
