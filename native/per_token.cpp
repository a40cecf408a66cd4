// Top-k and threshold: per token, the FFN neurons with the largest |act(gate x)| (or over a calibrated threshold).
// CPU layers run on single neurons (neuron_ffn.cpp's kernels through patch 0003's builder: up read in place from
// the mapped GGUF, down from neuron_down.cpp's neuron-major copy); other layers keep whole groups through patch
// 0002's mul_mat_id graph.

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

}  // namespace

namespace {

// The per-token layout, built once per session (per_token_build's first part): per layer, a single-neuron
// NeuronLayer (CPU layers: up in place, the neuron-major down) or patch 0002's groups (group_layer).
int32_t per_token_layout(sirius_session * s, bool all_groups, std::unique_ptr<SparseFFN> & out) {
    const llama_model * model = s->model->model;
    const int32_t n_layer = llama_model_n_layer(model);
    auto sp = std::make_unique<SparseFFN>(n_layer);
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
        FFNOverride & o = sp->table[il];
        o.up = f.up, o.gate = f.gate, o.down = f.down;
        if (single[il] && sp->down_nm->rows[il]) {
            o.sparse_up = f.up, o.sparse_gate = f.gate, o.sparse_down = f.down;  // the builder computes it
            const uint8_t * up_src = sp->file->tensor(f.name[0], ggml_nbytes(f.up));
            if (!up_src) return fail(SIRIUS_ERR_IO, std::string("cannot read ") + f.name[0] + " from " + s->model->path);
            CompactTensor u, d;
            int32_t rc = tensor_over(up_src, f.up->type, f.n_embd, f.n_ff, 1, f.name[0], u);
            sp->views.push_back(u);
            if (rc == SIRIUS_OK) rc = tensor_over(sp->down_nm->rows[il], sp->down_nm->type, f.n_embd, f.n_ff, 1, "the neuron-major ffn_down", d);
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
            o.sparse_up = up3, o.sparse_gate = f.gate, o.sparse_down = down3;
            sp->group_size[il] = (int32_t) f.G;
        }
    }
    out = std::move(sp);
    return SIRIUS_OK;
}

// A density (top-k) or the thresholds (threshold) on the layout: each layer's k, and what a step then reads.
void per_token_density(sirius_session * s, bool threshold, float density) {
    const llama_model * model = s->model->model;
    const int32_t n_layer = llama_model_n_layer(model);
    SparseFFN & sp = *s->sparse;
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
}

}  // namespace

// Top-k and threshold: per token, the FFN computes only the neurons it selects. Layers on the CPU run on single
// neurons (neuron_ffn.cpp's kernels through patch 0003's builder): up read in place from the mapped GGUF, down
// from the model's neuron-major copy (neuron_down.cpp). Other layers keep whole groups of G neurons through
// patch 0002's mul_mat_id graph (group_layer): top-k keeps round(density * n_groups) of them, and threshold does
// the same at its calibration's density (a threshold's varying count has no fixed-shape graph). The layout is
// built once per session; a new density or threshold changes only k.
int32_t per_token_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info) {
    const auto t0 = std::chrono::steady_clock::now();
    const bool threshold = sparsity == SIRIUS_SPARSITY_THRESHOLD;
    if (threshold && (int32_t) s->thresholds.size() != llama_model_n_layer(s->model->model)) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "no per-layer thresholds are set for this session: calibrate them "
                                                 "(sirius-local calibrate MODEL --density D) and set them first");
    }
    const char * groups_env = getenv("SIRIUS_PER_TOKEN_GROUPS");
    const bool all_groups = groups_env && strcmp(groups_env, "1") == 0;
    if (!s->sparse || (s->sparse->sparsity != SIRIUS_SPARSITY_TOPK && s->sparse->sparsity != SIRIUS_SPARSITY_THRESHOLD) ||
        s->sparse->all_groups != all_groups) {
        sparse_release(s);
        std::unique_ptr<SparseFFN> sp;
        if (int32_t rc = per_token_layout(s, all_groups, sp)) return rc;
        s->sparse = std::move(sp);
        set_ffn_table(s);
    }
    s->sparse->sparsity = sparsity;
    per_token_density(s, threshold, density);
    SparseFFN & sp = *s->sparse;
    sp.info.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (info) *info = sp.info;
    return SIRIUS_OK;
}

}  // namespace sirius
