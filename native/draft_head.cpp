// The trimmed draft head: single-token sparse decodes (drafts) compute logits only for a subset of the
// vocabulary, through a compact copy of the subset's rows of the output head (exact byte copies: rows are
// tokens). llama.cpp writes the subset's logits (patch 0008); logits_ith scatters them into a full-vocabulary
// row with -inf elsewhere, so argmax, beams and the sample rule's proposal (zero outside the subset) need no
// change. Dense steps and verify batches keep the full head: output never depends on the trim.
#include "sparse.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace sirius {

void head_reset_statistic(sirius_session * s) {
    s->head_max.assign(s->model->n_vocab, -std::numeric_limits<float>::infinity());
    s->head_rows = 0;
}

void head_collect(sirius_session * s, int32_t n_rows) {
    const int32_t n_vocab = s->model->n_vocab;
    if ((int32_t) s->head_max.size() != n_vocab) head_reset_statistic(s);
    float * mx = s->head_max.data();
    for (int32_t i = 0; i < n_rows; ++i) {
        const float * row = llama_get_logits_ith(s->ctx, i);
        if (!row) continue;
        for (int32_t t = 0; t < n_vocab; ++t) mx[t] = std::max(mx[t], row[t]);
        s->head_rows++;
    }
}

void head_release(sirius_session * s) {
    if (s->head) {
        llama_sirius_set_head(s->ctx, nullptr, nullptr);
        s->head.reset();
    }
}

const float * logits_ith(sirius_session * s, int32_t i) {
    const float * row = llama_get_logits_ith(s->ctx, i);
    if (!row || !s->head || !s->sparse_on || s->last_batch_tokens != 1) return row;
    DraftHead & h = *s->head;
    float * full = h.full.data();
    for (size_t q = 0; q < h.ids.size(); ++q) full[h.ids[q]] = row[q];
    return full;
}

namespace {

// Why this model's head cannot be trimmed (nullptr: it can).
const char * untrimmable(const llama_model * model, const MappedGGUF & file, int32_t n_vocab, const char ** name) {
    const ggml_tensor * out = llama_sirius_model_output(model);
    if (!out) return "the model has no output head";
    if (out->ne[1] != n_vocab || ggml_n_dims(out) != 2) return "the output head is not [n_embd, n_vocab]";
    if (gguf_find_tensor(file.g, "output.bias") >= 0) return "the output head has a bias";
    *name = gguf_find_tensor(file.g, "output.weight") >= 0 ? "output.weight" : "token_embd.weight";
    const int64_t id = gguf_find_tensor(file.g, *name);
    if (id < 0 || gguf_get_tensor_type(file.g, id) != out->type) return "the output head's type differs from the file's";
    return nullptr;
}

// The subset: the prompt's tokens, every end-of-generation token, and the n tokens with the highest dense
// logit over the prompt's positions (the statistic collected with Griffin's); without that statistic (top-k
// and threshold prefill without collecting), the n lowest token ids. benchmarks/NOTES.md, "Trimmed draft head"
// has both rules' acceptance. SIRIUS_HEAD_RULE=ids forces the second one and =mix takes both (the n top logits
// and the n lowest ids), for measurements.
std::vector<int32_t> head_subset(const sirius_session * s, int32_t n) {
    const int32_t n_vocab = s->model->n_vocab;
    std::vector<char> mark(n_vocab, 0);
    for (llama_token t : s->tokens) {
        if (t >= 0 && t < n_vocab) mark[t] = 1;
    }
    for (int32_t t = 0; t < n_vocab; ++t) {
        if (llama_vocab_is_eog(s->model->vocab, t)) mark[t] = 1;
    }
    const char * rule = getenv("SIRIUS_HEAD_RULE");
    // Only Griffin's own prefill collects it for this prompt: a statistic left by an earlier Griffin run would
    // make a top-k or threshold draft depend on what ran before.
    const bool griffin = s->sparse && s->sparse->sparsity == SIRIUS_SPARSITY_GRIFFIN;
    const bool by_logit = griffin && s->head_rows > 0 && (int32_t) s->head_max.size() == n_vocab && !(rule && strcmp(rule, "ids") == 0);
    const bool mix = by_logit && rule && strcmp(rule, "mix") == 0;
    const int32_t m = std::min(n, n_vocab);
    if (mix) {
        for (int32_t t = 0; t < m; ++t) mark[t] = 1;
    }
    if (by_logit) {
        std::vector<int32_t> order(n_vocab);
        for (int32_t t = 0; t < n_vocab; ++t) order[t] = t;
        const float * mx = s->head_max.data();
        std::nth_element(order.begin(), order.begin() + (m - 1), order.end(), [mx](int32_t a, int32_t b) {
            return mx[a] > mx[b] || (mx[a] == mx[b] && a < b);
        });
        for (int32_t q = 0; q < m; ++q) mark[order[q]] = 1;
    } else {
        for (int32_t t = 0; t < m; ++t) mark[t] = 1;
    }
    std::vector<int32_t> ids;
    for (int32_t t = 0; t < n_vocab; ++t) {
        if (mark[t]) ids.push_back(t);
    }
    return ids;
}

}  // namespace

int32_t head_build(sirius_session * s, int32_t n_keep, sirius_sparse_info * info) {
    head_release(s);
    if (info) info->draft_vocab = 0;
    if (n_keep < 0) return fail(SIRIUS_ERR_INVALID_ARGUMENT, "draft_vocab must be >= 0 (0 = the full head), got " + std::to_string(n_keep));
    if (n_keep == 0) return SIRIUS_OK;
    const auto t0 = std::chrono::steady_clock::now();
    const int32_t n_vocab = s->model->n_vocab;
    const std::shared_ptr<const MappedGGUF> mapped = model_file(s->model);
    if (!mapped) return fail(SIRIUS_ERR_IO, "cannot map the model file for the draft head: " + s->model->path);
    const char * name = nullptr;
    if (untrimmable(s->model->model, *mapped, n_vocab, &name)) return SIRIUS_OK;  // drafts keep the full head
    ggml_tensor * out = llama_sirius_model_output(s->model->model);

    std::vector<int32_t> ids = head_subset(s, n_keep);
    if ((int64_t) ids.size() * 10 > (int64_t) n_vocab * 9) return SIRIUS_OK;  // over 90%: not worth a copy
    const uint8_t * src = mapped->tensor(name, ggml_nbytes(out));
    if (!src) return fail(SIRIUS_ERR_IO, std::string("cannot read ") + name + " from " + s->model->path);

    auto h = std::make_unique<DraftHead>();
    const int64_t n_embd = out->ne[0], n_sub = (int64_t) ids.size();
    if (int32_t rc = alloc_like(out, out->type, n_embd, n_sub, h->t)) return rc;
    const size_t row = ggml_row_size(out->type, n_embd);
    std::vector<uint8_t> staging;
    uint8_t * dst = static_cast<uint8_t *>(h->t.t->data);
    if (!ggml_backend_buffer_is_host(h->t.buf)) {
        staging.resize(row * n_sub);
        dst = staging.data();
    }
    for (int64_t q = 0; q < n_sub; ++q) memcpy(dst + q * row, src + (size_t) ids[q] * row, row);
    if (dst != h->t.t->data) ggml_backend_tensor_set(h->t.t, dst, 0, row * n_sub);
    h->ids = std::move(ids);
    h->full.assign(n_vocab, -std::numeric_limits<float>::infinity());
    llama_sirius_set_head(s->ctx, out, h->t.t);
    if (info) {
        info->draft_vocab = (int32_t) n_sub;
        count_bytes(h->t, *info);
        info->step_bytes -= (int64_t) ggml_nbytes(out) - (int64_t) ggml_nbytes(h->t.t);
        info->build_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
    s->head = std::move(h);
    return SIRIUS_OK;
}

}  // namespace sirius

extern "C" {

int32_t sirius_draft_head_build(sirius_session * s, int32_t draft_vocab, sirius_sparse_info * info) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    return sirius::head_build(s, draft_vocab, info);
}

int32_t sirius_test_draft_head_tokens(const sirius_session * s, int32_t * out, int32_t n_max) {
    if (!s || !s->head) return 0;
    const auto & ids = s->head->ids;
    if (out) std::copy_n(ids.begin(), std::min<size_t>(ids.size(), (size_t) std::max(n_max, 0)), out);
    return (int32_t) ids.size();
}

}  // extern "C"
