// Threshold sparsity (CATS on neuron groups): each single-token decode computes, per layer, only the groups of
// G neurons whose score sum |act(gate x)| reaches the layer's calibrated threshold, so the number of groups
// varies per token and per layer. ggml graphs have fixed shapes, so the selection and the skipped work live in
// two CPU kernels (ggml custom ops), wired into llama.cpp's FFN through patch 0003's builder:
//
//   a = act(gate x)                                  stock ops, gate dense
//   h = threshold_up(a, x, up3)    h[g] = a[g] * (up[g] x) for kept groups g, 0 elsewhere
//   y = block_down(h, down3)       y = sum over kept groups of down[:, g] h[g]
//
// up3 is the GGUF's ffn_up read in place ([n_embd, G, n_groups]: a group is G contiguous rows); down3 is the
// block-major copy of ffn_down ([G, n_embd, n_groups]: group g's quant block from every row, contiguous), so a
// skipped group is bytes never read. Both ops use ggml-cpu's own vec_dot for the weight type, on activations
// quantised with the type's from_float, as ggml's mul_mat does. Work splits like ggml's: threshold_up over the
// kept rows of up, block_down over output rows; the graph's barrier between the two nodes orders them.
//
// Calibration uses the same hook on dense batches: the FFN is built from stock ops, with a pass-through node on
// act(gate x) that records every token's group scores.

#include "sparse.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace sirius {

namespace {

// Groups whose score reaches the threshold, ascending; the same on every thread (each computes it: n_ff adds).
void kept_groups(const float * a, int64_t G, int64_t nb, float threshold, std::vector<int32_t> & out) {
    out.clear();
    for (int64_t b = 0; b < nb; ++b) {
        const float * p = a + b * G;
        float sc = 0.0f;
        for (int64_t i = 0; i < G; ++i) sc += std::fabs(p[i]);
        if (sc >= threshold) out.push_back((int32_t) b);
    }
}

// src: a [n_ff] (act(gate x)), x [n_embd], up3 [n_embd, G, nb]; dst h [n_ff].
void threshold_up(ggml_tensor * dst, int ith, int nth, void * userdata) {
    auto * L = static_cast<BlockLayer *>(userdata);
    const ggml_tensor * a = dst->src[0], * x = dst->src[1], * up3 = dst->src[2];
    const int64_t n_embd = up3->ne[0], G = up3->ne[1], nb = up3->ne[2];
    const float * av = static_cast<const float *>(a->data);
    float * h = static_cast<float *>(dst->data);

    thread_local std::vector<int32_t> kept;
    thread_local std::vector<uint8_t> xq;
    thread_local std::vector<uint8_t> on;
    kept_groups(av, G, nb, L->threshold, kept);

    const ggml_type_traits_cpu * tt = ggml_get_type_traits_cpu(up3->type);
    const void * xv = x->data;
    if (tt->vec_dot_type != GGML_TYPE_F32) {
        xq.resize(ggml_row_size(tt->vec_dot_type, n_embd));
        ggml_get_type_traits_cpu(tt->vec_dot_type)->from_float(static_cast<const float *>(x->data), xq.data(), n_embd);
        xv = xq.data();
    }
    const size_t row = ggml_row_size(up3->type, n_embd);
    const uint8_t * base = static_cast<const uint8_t *>(up3->data);
    const int64_t n_rows = (int64_t) kept.size() * G;
    const int64_t chunk = (n_rows + nth - 1) / nth;
    const int64_t j0 = std::min<int64_t>(n_rows, chunk * ith), j1 = std::min<int64_t>(n_rows, j0 + chunk);
    for (int64_t j = j0; j < j1; ++j) {
        const int64_t n = (int64_t) kept[j / G] * G + j % G;
        float u;
        tt->vec_dot((int) n_embd, &u, 0, base + (size_t) n * row, 0, xv, 0, 1);
        h[n] = u * av[n];
    }
    // Skipped groups are zero: block_down reads that as "not kept" (and a kept group that is exactly zero adds
    // nothing anyway).
    on.assign(nb, 0);
    for (int32_t b : kept) on[b] = 1;
    for (int64_t b = ith; b < nb; b += nth) {
        if (!on[b]) memset(h + b * G, 0, G * sizeof(float));
    }
    if (ith == 0) {
        L->kept += (int64_t) kept.size();
        L->seen += nb;
        sirius_session * s = L->s;
        if (s->record_topk && L->il < (int32_t) s->topk_ids.size()) s->topk_ids[L->il] = kept;
    }
}

// src: h [n_ff], down3 [G, n_embd, nb]; dst y [n_embd].
void block_down(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * hs = dst->src[0], * down3 = dst->src[1];
    const int64_t G = down3->ne[0], n_embd = down3->ne[1], nb = down3->ne[2];
    const float * h = static_cast<const float *>(hs->data);

    thread_local std::vector<int32_t> kept;
    thread_local std::vector<uint8_t> hq;
    thread_local std::vector<float> acc;
    kept.clear();
    for (int64_t b = 0; b < nb; ++b) {
        const float * p = h + b * G;
        if (std::any_of(p, p + G, [](float v) { return v != 0.0f; })) kept.push_back((int32_t) b);
    }
    const ggml_type_traits_cpu * tt = ggml_get_type_traits_cpu(down3->type);
    const size_t blk = ggml_row_size(down3->type, G), qblk = ggml_row_size(tt->vec_dot_type, G);
    hq.resize(kept.size() * qblk);
    for (size_t i = 0; i < kept.size(); ++i) {
        const float * p = h + (int64_t) kept[i] * G;
        if (tt->vec_dot_type == GGML_TYPE_F32) {
            memcpy(hq.data() + i * qblk, p, G * sizeof(float));
        } else {
            ggml_get_type_traits_cpu(tt->vec_dot_type)->from_float(p, hq.data() + i * qblk, G);
        }
    }
    const int64_t chunk = (n_embd + nth - 1) / nth;
    const int64_t r0 = std::min<int64_t>(n_embd, chunk * ith), r1 = std::min<int64_t>(n_embd, r0 + chunk);
    acc.assign(r1 - r0, 0.0f);
    const uint8_t * base = static_cast<const uint8_t *>(down3->data);
    // Group-outer: each group's rows are one contiguous read. (Gathering a row's kept blocks into one buffer for
    // a single vec_dot was measured slower: 0.60x dense against 0.91x at density 1.0, the copies cost more than
    // the calls they save.)
    for (size_t i = 0; i < kept.size(); ++i) {
        const uint8_t * g = base + ((size_t) kept[i] * n_embd + r0) * blk;
        const void * hv = hq.data() + i * qblk;
        for (int64_t r = r0; r < r1; ++r) {
            float v;
            tt->vec_dot((int) G, &v, 0, g + (size_t) (r - r0) * blk, 0, hv, 0, 1);
            acc[r - r0] += v;
        }
    }
    float * y = static_cast<float *>(dst->data);
    std::copy(acc.begin(), acc.end(), y + r0);
}

// Calibration: dst = a ([G, n_groups, n_tok]) unchanged; appends each token's n_groups scores to the layer's
// record (userdata: the session's block_scores[il], which stays put while recording). Thread 0 does it all
// (cheap): ggml-cpu calls a custom op on every thread whatever its n_tasks.
void record_scores(ggml_tensor * dst, int ith, int, void * userdata) {
    if (ith != 0) return;
    auto * out = static_cast<std::vector<float> *>(userdata);
    const ggml_tensor * a = dst->src[0];
    const int64_t G = a->ne[0], nb = a->ne[1], n_tok = a->ne[2];
    const float * av = static_cast<const float *>(a->data);
    memcpy(dst->data, av, ggml_nbytes(a));
    const size_t at = out->size();
    out->resize(at + (size_t) (nb * n_tok));
    for (int64_t g = 0; g < nb * n_tok; ++g) {
        float sc = 0.0f;
        for (int64_t i = 0; i < G; ++i) sc += std::fabs(av[g * G + i]);
        (*out)[at + g] = sc;
    }
}

ggml_tensor * act(ggml_context * ctx, ggml_tensor * g, bool gelu) { return gelu ? ggml_gelu(ctx, g) : ggml_silu(ctx, g); }

// The llama_sirius_ffn_builder: threshold decodes (single-token ubatches in sparse mode) and block-score
// recording (dense batches); NULL (llama.cpp's own FFN) for everything else.
ggml_tensor * build(ggml_context * ctx, ggml_tensor * cur, int32_t il, ggml_tensor * up, ggml_tensor * gate,
                    ggml_tensor * down, bool gelu, bool sparse, void * user) {
    auto * s = static_cast<sirius_session *>(user);
    const int64_t n_tok = cur->ne[1];
    if (cur->ne[2] * cur->ne[3] != 1 || cur->type != GGML_TYPE_F32) return nullptr;
    if (sparse && n_tok == 1 && s->sparse && s->sparse->sparsity == SIRIUS_SPARSITY_THRESHOLD &&
        il < (int32_t) s->sparse->blocks.size() && s->sparse->blocks[il]) {
        BlockLayer * L = s->sparse->blocks[il].get();
        const ggml_tensor * const * row6 = &s->sparse->table[(size_t) il * 6];
        if (row6[0] != up || row6[1] != gate || row6[2] != down) return nullptr;
        ggml_tensor * x = ggml_is_contiguous(cur) ? cur : ggml_cont(ctx, cur);
        ggml_tensor * a = act(ctx, ggml_mul_mat(ctx, gate, x), gelu);
        ggml_tensor * args_up[3] = {a, x, L->up3};
        ggml_tensor * h = ggml_custom_4d(ctx, GGML_TYPE_F32, up->ne[1], 1, 1, 1, args_up, 3, threshold_up, GGML_N_TASKS_MAX, L);
        ggml_format_name(h, "ffn_threshold_h-%d", il);
        ggml_tensor * args_down[2] = {h, L->down3};
        return ggml_custom_4d(ctx, GGML_TYPE_F32, down->ne[1], 1, 1, 1, args_down, 2, block_down, GGML_N_TASKS_MAX, nullptr);
    }
    if (!sparse && s->record_scores && il < (int32_t) s->score_group.size() && s->score_group[il] > 0) {
        const int64_t G = s->score_group[il], n_ff = up->ne[1];
        ggml_tensor * a = act(ctx, ggml_mul_mat(ctx, gate, cur), gelu);
        ggml_tensor * a3 = ggml_reshape_3d(ctx, a, G, n_ff / G, n_tok);
        ggml_tensor * args[1] = {a3};
        a3 = ggml_custom_4d(ctx, GGML_TYPE_F32, G, n_ff / G, n_tok, 1, args, 1, record_scores, GGML_N_TASKS_MAX, &s->block_scores[il]);
        ggml_tensor * h = ggml_mul(ctx, ggml_reshape_2d(ctx, a3, n_ff, n_tok), ggml_mul_mat(ctx, up, cur));
        ggml_format_name(h, gelu ? "ffn_geglu-%d" : "ffn_swiglu-%d", il);
        return ggml_mul_mat(ctx, down, h);
    }
    return nullptr;
}

}  // namespace

void block_ffn_sync(sirius_session * s) {
    const bool threshold = s->sparse && s->sparse->sparsity == SIRIUS_SPARSITY_THRESHOLD;
    const bool on = threshold || s->record_scores;
    llama_sirius_set_ffn_builder(s->ctx, on ? build : nullptr, on ? s : nullptr);
}

}  // namespace sirius

extern "C" {

int32_t sirius_set_thresholds(sirius_session * s, const float * thresholds, int32_t n) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    const int32_t n_layer = llama_model_n_layer(s->model->model);
    if (!thresholds || n == 0) {
        s->thresholds.clear();
        return SIRIUS_OK;
    }
    if (n != n_layer) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "thresholds: got " + std::to_string(n) + " values for a model of " +
                                                             std::to_string(n_layer) + " layers (one per layer)");
    }
    for (int32_t i = 0; i < n; ++i) {
        if (!std::isfinite(thresholds[i]) || thresholds[i] < 0.0f) {
            return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "thresholds must be finite and >= 0 (layer " + std::to_string(i) + ")");
        }
    }
    s->thresholds.assign(thresholds, thresholds + n);
    if (s->sparse && s->sparse->sparsity == SIRIUS_SPARSITY_THRESHOLD) {  // live: the kernels read it per decode
        for (auto & L : s->sparse->blocks) {
            if (L) L->threshold = s->thresholds[L->il];
        }
    }
    return SIRIUS_OK;
}

int32_t sirius_block_scores_record(sirius_session * s, int32_t record) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    const int32_t n_layer = llama_model_n_layer(s->model->model);
    if (record) {  // reset: the graphs built from here on point into these vectors
        s->block_scores.assign(n_layer, {});
        s->score_group.assign(n_layer, 0);
        sirius::LayerFFN f;
        for (int32_t il = 0; il < n_layer; ++il) {
            if (sirius::layer_ffn(s->model->model, il, f)) s->score_group[il] = (int32_t) f.G;
        }
    }
    s->record_scores = record != 0;
    sirius::block_ffn_sync(s);
    return SIRIUS_OK;
}

int64_t sirius_block_scores(const sirius_session * s, int32_t il, float * out, int64_t n_max, int32_t * n_groups) {
    if (!s || il < 0 || il >= (int32_t) s->block_scores.size()) return -1;
    const auto & v = s->block_scores[il];
    if (out) std::copy_n(v.begin(), std::min<int64_t>((int64_t) v.size(), std::max<int64_t>(n_max, 0)), out);
    if (n_groups) {
        const int32_t G = s->score_group[il];
        sirius::LayerFFN f;
        *n_groups = G > 0 && sirius::layer_ffn(s->model->model, il, f) ? (int32_t) (f.n_ff / G) : 0;
    }
    return (int64_t) v.size();
}

int32_t sirius_threshold_kept(const sirius_session * s, int64_t * kept, int64_t * seen) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    int64_t k = 0, n = 0;
    if (s->sparse) {
        for (const auto & L : s->sparse->blocks) {
            if (!L) continue;
            k += L->kept.load();
            n += L->seen.load();
        }
    }
    if (kept) *kept = k;
    if (seen) *seen = n;
    return SIRIUS_OK;
}

}  // extern "C"
