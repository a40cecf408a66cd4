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

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>

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

// Allocates one tensor of `type`, shape ne0 x ne1 x ne2, in buft; falls back to the plain CPU buffer type when
// buft is a CPU extra type that cannot take this shape.
int32_t alloc_tensor(ggml_backend_buffer_type_t buft, ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                     CompactTensor & out) {
    ggml_init_params ip = {ggml_tensor_overhead(), nullptr, true};
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

// A tensor like `like` (its type) with shape ne0 x ne1, in the buffer type of `like` (plain host memory for
// weights read from the mmapped file).
int32_t alloc_like(const ggml_tensor * like, int64_t ne0, int64_t ne1, CompactTensor & out) {
    ggml_backend_buffer_type_t buft = like->buffer ? ggml_backend_buffer_get_type(like->buffer) : ggml_backend_cpu_buffer_type();
    if (ggml_backend_buft_is_host(buft) && strcmp(ggml_backend_buft_name(buft), "CPU_Mapped") == 0) {
        buft = ggml_backend_cpu_buffer_type();
    }
    return alloc_tensor(buft, like->type, ne0, ne1, 1, out);
}


}  // namespace

SparseFFN::~SparseFFN() {
    for (auto & c : owned) {
        if (c.buf) ggml_backend_buffer_free(c.buf);
        if (c.ctx) ggml_free(c.ctx);
    }
    if (file_view.buf) ggml_backend_buffer_free(file_view.buf);
    if (file_view.ctx) ggml_free(file_view.ctx);
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
        block_ffn_sync(s);
    }
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

// The CPU extra buffer type (weight repacking) that holds t, or nullptr if t is in plain or mapped memory.
ggml_backend_buffer_type_t repack_buft(const ggml_tensor * t) {
    return t->buffer && cpu_extra(ggml_backend_buffer_get_type(t->buffer)) ? ggml_backend_buffer_get_type(t->buffer) : nullptr;
}

// Top-k and threshold: per layer, up as [n_embd, G, n_groups], a block-major copy of down [G, n_embd, n_groups]
// (group b's quant block from every row, contiguous), and the selection: top-k keeps round(density * n_groups)
// groups per token (patch 0002's graph: ggml_mul_mat_id); threshold keeps the groups whose score reaches the
// layer's calibrated threshold (block_ffn.cpp's kernels through patch 0003's builder).
// Layout: where the model's own weights are repacked, top-k views the repacked up and copies down into the
// CPU repacking buffer, so mul_mat_id runs the same interleaved kernels as dense decoding (measured: the plain
// layout's vec_dot costs more than the skipped bytes save on a 2-core CPU); threshold's kernels read the file
// layout, so up is read in place from the mapped GGUF and down is copied plain. Built once per session and layout; a new
// density only changes the per-layer selection.
int32_t block_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info) {
    const auto t0 = std::chrono::steady_clock::now();
    const llama_model * model = s->model->model;
    const int32_t n_layer = llama_model_n_layer(model);
    const bool threshold = sparsity == SIRIUS_SPARSITY_THRESHOLD;
    if (threshold && (int32_t) s->thresholds.size() != n_layer) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "no per-layer thresholds are set for this session: calibrate them "
                                                 "(sirius-local calibrate MODEL --density D) and set them first");
    }
    if (threshold) {  // its kernels are ggml-cpu custom ops: weights offloaded to a GPU would bounce every token
        LayerFFN f;
        for (int32_t il = 0; il < n_layer; ++il) {
            if (!layer_ffn(model, il, f)) continue;
            for (const ggml_tensor * t : {f.up, f.gate, f.down}) {
                ggml_backend_dev_t dev = t->buffer ? ggml_backend_buft_get_device(ggml_backend_buffer_get_type(t->buffer)) : nullptr;
                if (dev && ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
                    return fail(SIRIUS_ERR_UNSUPPORTED, "sparsity 'threshold' runs on the CPU only, and layer " +
                                                            std::to_string(il) + "'s FFN is on " + ggml_backend_dev_name(dev) +
                                                            ": load with n_gpu_layers=0, or use sparsity 'topk' or 'griffin'");
                }
            }
        }
    }
    const bool want_repack = !threshold;  // (falls back to the plain layout per tensor where it cannot)
    if (!s->sparse || (s->sparse->sparsity != SIRIUS_SPARSITY_TOPK && s->sparse->sparsity != SIRIUS_SPARSITY_THRESHOLD) ||
        s->sparse->repack_layout != want_repack) {
        sparse_release(s);
        auto sp = std::make_unique<SparseFFN>();
        sp->table.assign((size_t) n_layer * 6, nullptr);
        sp->groups.assign(n_layer, {});
        sp->group_size.assign(n_layer, 0);
        sp->topk_blocks.assign(n_layer, 0);
        sp->blocks.resize(n_layer);
        sp->info.n_layers = n_layer;
        sp->repack_layout = want_repack;
        sp->file = std::make_unique<MappedGGUF>();
        if (!sp->file->open(s->model->path)) {
            return fail(SIRIUS_ERR_IO, "cannot map the model file for the sparse FFN: " + s->model->path);
        }
        sp->file_view.buf = ggml_backend_cpu_buffer_from_ptr(const_cast<uint8_t *>(sp->file->base), sp->file->size);
        const size_t n_tensors = 2 * (size_t) n_layer + 1;  // per layer: up3 (a view or a file tensor), spare
        ggml_init_params ip = {ggml_tensor_overhead() * n_tensors, nullptr, true};
        sp->file_view.ctx = ggml_init(ip);
        if (!sp->file_view.buf || !sp->file_view.ctx) return fail(SIRIUS_ERR_INTERNAL, "could not map the GGUF for top-k");
        LayerFFN f;
        std::vector<uint8_t> staging;
        for (int32_t il = 0; il < n_layer; ++il) {
            if (!layer_ffn(model, il, f)) continue;  // stays dense
            ggml_tensor * up = f.up, * gate = f.gate, * down = f.down;
            const char (&name)[3][96] = f.name;
            const int64_t n_embd = f.n_embd, n_ff = f.n_ff, G = f.G, nb = n_ff / G;
            const uint8_t * up_src = sp->file->tensor(name[0], ggml_nbytes(up));
            const uint8_t * down_src = sp->file->tensor(name[2], ggml_nbytes(down));
            if (!up_src || !down_src) return fail(SIRIUS_ERR_IO, std::string("cannot read layer ") + std::to_string(il) + "'s FFN from " + s->model->path);

            // up3: where the model's up is repacked, a 3-D view of that very tensor. Repacking interleaves rows in
            // runs of 8 and G is a multiple of 8, so each group of G rows is a contiguous, self-contained
            // repacked matrix, which is what mul_mat_id's repacked path reads per expert; the view's buffer
            // gives it the same kernels. No copy. Otherwise (and for threshold's kernels) the file layout,
            // read in place from the mapped GGUF.
            ggml_tensor * up3 = nullptr;
            bool repacked = false;
            if (want_repack && repack_buft(up) && up->extra) {
                up3 = ggml_view_3d(sp->file_view.ctx, up, n_embd, G, nb, up->nb[1], (size_t) G * up->nb[1], 0);
                repacked = ggml_backend_view_init(up3) == GGML_STATUS_SUCCESS && up3->extra != nullptr;
            }
            if (!repacked) {
                up3 = ggml_new_tensor_3d(sp->file_view.ctx, up->type, n_embd, G, nb);
                if (ggml_backend_tensor_alloc(sp->file_view.buf, up3, const_cast<uint8_t *>(up_src)) != GGML_STATUS_SUCCESS) {
                    return fail(SIRIUS_ERR_INTERNAL, "could not place the top-k view of " + std::string(name[0]));
                }
            }
            const size_t row = ggml_row_size(down->type, n_ff), blk = ggml_row_size(down->type, G);
            staging.resize(ggml_nbytes(down));
            for (int64_t b = 0; b < nb; ++b) {
                for (int64_t r = 0; r < n_embd; ++r) {
                    memcpy(staging.data() + ((size_t) b * n_embd + r) * blk, down_src + (size_t) r * row + (size_t) b * blk, blk);
                }
            }
            CompactTensor c;
            ggml_backend_buffer_type_t dbuft = want_repack ? repack_buft(down) : nullptr;
            if (int32_t rc = alloc_tensor(dbuft ? dbuft : ggml_backend_cpu_buffer_type(), down->type, G, n_embd, nb, c)) return rc;
            sp->owned.push_back(c);
            ggml_backend_tensor_set(c.t, staging.data(), 0, staging.size());  // a repacking buffer converts as it stores
            ggml_tensor ** row6 = &sp->table[(size_t) il * 6];
            row6[0] = up; row6[1] = gate; row6[2] = down;
            row6[3] = up3; row6[4] = gate; row6[5] = c.t;
            sp->group_size[il] = (int32_t) G;
            sp->blocks[il] = std::make_unique<BlockLayer>();
            sp->blocks[il]->s = s;
            sp->blocks[il]->il = il;
            sp->blocks[il]->up3 = up3;
            sp->blocks[il]->down3 = c.t;
        }
        s->sparse = std::move(sp);
        llama_sirius_set_ffn(s->ctx, n_layer, s->sparse->table.data());
    }
    SparseFFN & sp = *s->sparse;
    sp.sparsity = sparsity;
    int64_t kept = 0, total = 0, skipped = 0;
    sp.info.n_layers_sparse = 0;
    sp.info.group_size = 0;
    for (int32_t il = 0; il < n_layer; ++il) {
        ggml_tensor * up3 = sp.table[(size_t) il * 6 + 3];
        if (!up3) continue;
        const int64_t G = up3->ne[1], nb = up3->ne[2], n_embd = up3->ne[0];
        // Threshold: the expected count (the calibration's density; each token keeps its own number of groups).
        // Its top-k entry keeps every group, so a layer the builder ever declined would still be exact.
        const int64_t k = std::clamp<int64_t>(std::llround(density * nb), 1, nb);
        sp.topk_blocks[il] = (int32_t) (threshold ? nb : k);
        if (sp.blocks[il]) sp.blocks[il]->threshold = threshold ? s->thresholds[il] : 0.0f;
        sp.info.n_layers_sparse++;
        sp.info.group_size = std::max<int32_t>(sp.info.group_size, (int32_t) G);
        kept += k * G;
        total += nb * G;
        skipped += 2 * n_embd * (nb - k) * G;  // up and down rows of the skipped groups (gate is dense)
    }
    llama_sirius_set_ffn_topk(s->ctx, n_layer, sp.topk_blocks.data());
    block_ffn_sync(s);
    sp.info.bytes = 0;
    for (const auto & c : sp.owned) sp.info.bytes += (int64_t) ggml_backend_buffer_get_size(c.buf);
    sp.info.density = total ? (double) kept / (double) total : 1.0;
    const double n_params = (double) llama_model_n_params(model);
    sp.info.param_fraction = n_params > 0 ? (n_params - (double) skipped) / n_params : 1.0;
    sp.info.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (info) *info = sp.info;
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
    if (sparsity != SIRIUS_SPARSITY_GRIFFIN) return block_build(s, sparsity, density, info);
    if (s->griffin_tokens <= 0) {
        return fail(SIRIUS_ERR_INVALID_ARGUMENT, "no Griffin statistic: evaluate a prompt with sirius_griffin_collect on first");
    }
    const auto t0 = std::chrono::steady_clock::now();
    sparse_release(s);

    const llama_model * model = s->model->model;
    const int32_t n_layer = llama_model_n_layer(model);
    auto sp = std::make_unique<SparseFFN>();
    sp->table.assign((size_t) n_layer * 6, nullptr);
    sp->groups.assign(n_layer, {});
    sp->group_size.assign(n_layer, 0);
    sp->info.n_layers = n_layer;

    MappedGGUF file;
    if (!file.open(s->model->path)) {
        return fail(SIRIUS_ERR_IO, "cannot map the model file for the sparse FFN: " + s->model->path);
    }

    int64_t kept_neurons = 0, total_neurons = 0, ffn_params_skipped = 0;
    std::vector<uint8_t> dst;
    int32_t rc = SIRIUS_OK;
    LayerFFN f;
    for (int32_t il = 0; il < n_layer && rc == SIRIUS_OK; ++il) {
        if (!layer_ffn(model, il, f) || il >= (int32_t) s->griffin_sumsq.size()) continue;  // stays dense
        ggml_tensor * up = f.up, * gate = f.gate, * down = f.down;
        const char (&name)[3][96] = f.name;
        const int64_t n_embd = f.n_embd, n_ff = f.n_ff, G = f.G, n_groups = n_ff / G;
        const auto & acc = s->griffin_sumsq[il];
        if ((int64_t) acc.size() != n_ff) continue;
        const int64_t k = std::clamp<int64_t>(std::llround(density * n_groups), 1, n_groups);

        // Group score: sum over its neurons of Griffin's per-neuron statistic (column L2 norm).
        std::vector<double> score(n_groups, 0.0);
        for (int64_t i = 0; i < n_ff; ++i) score[i / G] += std::sqrt(acc[i]);
        std::vector<int32_t> order(n_groups);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
        std::vector<int32_t> keep(order.begin(), order.begin() + k);
        std::sort(keep.begin(), keep.end());

        // gate/up: G contiguous rows per group.
        ggml_tensor * compact[3] = {nullptr, nullptr, nullptr};
        for (int j = 0; j < 2 && rc == SIRIUS_OK; ++j) {
            const ggml_tensor * orig = j == 0 ? up : gate;
            const uint8_t * src = file.tensor(name[j], ggml_nbytes(orig));
            if (!src) {
                rc = fail(SIRIUS_ERR_IO, std::string("cannot read ") + name[j] + " from " + s->model->path);
                break;
            }
            const size_t row = ggml_row_size(orig->type, n_embd), grp = row * G;
            dst.resize(grp * k);
            for (int64_t q = 0; q < k; ++q) memcpy(dst.data() + q * grp, src + (size_t) keep[q] * grp, grp);
            CompactTensor c;
            if ((rc = alloc_like(orig, n_embd, k * G, c)) != SIRIUS_OK) break;
            ggml_backend_tensor_set(c.t, dst.data(), 0, dst.size());
            compact[j] = c.t;
            sp->owned.push_back(c);
        }
        if (rc != SIRIUS_OK) break;
        // down: in every one of its n_embd rows, the quant blocks of the kept groups.
        const uint8_t * src = file.tensor(name[2], ggml_nbytes(down));
        if (!src) {
            rc = fail(SIRIUS_ERR_IO, std::string("cannot read ") + name[2] + " from " + s->model->path);
            break;
        }
        const size_t row = ggml_row_size(down->type, n_ff), blk = ggml_row_size(down->type, G), crow = blk * k;
        dst.resize(crow * n_embd);
        for (int64_t r = 0; r < n_embd; ++r) {
            const uint8_t * srow = src + (size_t) r * row;
            uint8_t * drow = dst.data() + (size_t) r * crow;
            for (int64_t q = 0; q < k; ++q) memcpy(drow + q * blk, srow + (size_t) keep[q] * blk, blk);
        }
        CompactTensor c;
        if ((rc = alloc_like(down, k * G, n_embd, c)) != SIRIUS_OK) break;
        ggml_backend_tensor_set(c.t, dst.data(), 0, dst.size());
        compact[2] = c.t;
        sp->owned.push_back(c);

        ggml_tensor ** row6 = &sp->table[(size_t) il * 6];
        row6[0] = up; row6[1] = gate; row6[2] = down;
        row6[3] = compact[0]; row6[4] = compact[1]; row6[5] = compact[2];
        sp->groups[il] = std::move(keep);
        sp->group_size[il] = (int32_t) G;
        sp->info.n_layers_sparse++;
        sp->info.group_size = std::max<int32_t>(sp->info.group_size, (int32_t) G);
        kept_neurons += k * G;
        total_neurons += n_ff;
        ffn_params_skipped += 3 * n_embd * (n_ff - k * G);
    }
    if (rc != SIRIUS_OK) return rc;

    for (const auto & c : sp->owned) sp->info.bytes += (int64_t) ggml_backend_buffer_get_size(c.buf);
    sp->info.density = total_neurons ? (double) kept_neurons / (double) total_neurons : 1.0;
    const double n_params = (double) llama_model_n_params(model);
    sp->info.param_fraction = n_params > 0 ? (n_params - (double) ffn_params_skipped) / n_params : 1.0;
    sp->info.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (sp->info.n_layers_sparse > 0) {
        llama_sirius_set_ffn(s->ctx, n_layer, sp->table.data());
    }
    if (info) *info = sp->info;
    s->sparse = std::move(sp);
    return SIRIUS_OK;
}

}  // namespace sirius

sirius_session::sirius_session() = default;
sirius_session::~sirius_session() = default;

void sirius::griffin_set_collect(sirius_session * s, bool collect, bool reset) {
    if (reset) {
        s->griffin_sumsq.assign(llama_model_n_layer(s->model->model), {});
        s->griffin_tokens = 0;
        s->griffin_upto = 0;
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
