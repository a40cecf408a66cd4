// Tree drafting and verification (width W > 1), after the Sirius paper's beam variant (its reference code's tree search):
// the sparse model keeps W beams for K-1 levels: its greedy chain and the W-1 best others by cumulative log
// softmax(logits / T) (the paper keeps the W best; the greedy chain is kept here so that W > 1 never accepts
// fewer drafts than W = 1 on the same drafts, and it is the cheapest beam to keep, see below); the dense
// model checks the union of the beams' paths in ONE batch; the beam with the longest accepted prefix wins and
// the correction comes from the dense logits of its last accepted node.
//
// The tree lives in llama.cpp's unified KV cache as sequences, so no attention-mask patch is needed. Each beam
// is a sequence id whose cells are the session's tokens (sequence 0's cells, shared, not copied) and the nodes
// on its path; a node on several beams' paths is one cell carrying all their ids. llama.cpp lets a token attend
// to the cells of its (first) sequence at positions up to its own, and on a path that is exactly the node's
// ancestors: a tree attention mask. Positions are c + depth, so every path is consecutive, as llama.cpp wants.
// Beams of consecutive levels use two banks of ids (1..W and W+1..2W): a level's beams are copied from their
// parents' ids (metadata only) before the parents' ids are dropped, which frees the pruned branches' cells.

#include "accept.h"
#include "internal.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace sirius {
namespace {

struct Node {
    llama_token tok;
    int32_t     parent;  // index into the node list; -1 for the root
    int32_t     depth;   // position = c + depth
};

struct Beam {
    int32_t leaf;    // node index
    double  score;   // cumulative log softmax(l / T) of the path's drafts
    int32_t seq;     // sequence id in the KV cache
};

// The w largest logits (in order), leaving out end-of-generation tokens unless they are wanted: a drafted end
// could end generation before it is verified; the dense correction still writes one where it belongs.
void top_tokens(const float * l, int32_t n, int32_t w, const llama_vocab * vocab, bool skip_eog, std::vector<llama_token> & out) {
    out.clear();
    for (int32_t t = 0; t < n; ++t) {
        if ((int32_t) out.size() == w && l[t] <= l[out.back()]) continue;
        if (skip_eog && llama_vocab_is_eog(vocab, t)) continue;
        auto it = std::upper_bound(out.begin(), out.end(), t, [l](llama_token a, llama_token b) { return l[a] > l[b]; });
        out.insert(it, t);
        if ((int32_t) out.size() > w) out.pop_back();
    }
}

// One llama_decode of tokens at positions c + depth, each in the sequences listed for it; logits for every row.
int32_t decode_nodes(sirius_session * s, llama_batch & b, const std::vector<llama_token> & toks, const std::vector<int32_t> & pos,
                     const std::vector<std::vector<int32_t>> & seqs, bool logits) {
    b.n_tokens = (int32_t) toks.size();
    for (int32_t i = 0; i < b.n_tokens; ++i) {
        b.token[i] = toks[i];
        b.pos[i] = pos[i];
        b.n_seq_id[i] = (int32_t) seqs[i].size();
        std::copy(seqs[i].begin(), seqs[i].end(), b.seq_id[i]);
        b.logits[i] = logits;
    }
    const int32_t rc = budgeted_decode(s, b);
    s->last_batch_tokens = b.n_tokens;
    if (rc != 0) return fail(SIRIUS_ERR_DECODE, "llama_decode failed on a draft tree (code " + std::to_string(rc) + ")");
    return SIRIUS_OK;
}

// One tree period's state and its phases (tree_period runs them in order).
struct Tree {
    sirius_session * s;
    const sirius_correction_params & cp;
    const bool skip_eog;
    const int32_t W, n_vocab, c;  // width, vocabulary, position of the root
    llama_memory_t mem;
    llama_batch b;
    std::vector<Node> nodes;
    std::vector<Beam> beams;
    int32_t bank = 0;  // beams' ids: 1 + bank·W + i
    // verify's outcome: each final beam's nodes (depth 1..K-1), each node's row in the batch, the rows' logits
    std::vector<std::vector<int32_t>> paths;
    std::vector<int32_t> row_of;
    std::vector<const float *> rows;

    Tree(sirius_session * s_, const sirius_generate_params & p, llama_token root, int32_t k)
        : s(s_), cp(p.sirius), skip_eog(!p.ignore_eos), W(p.sirius.width), n_vocab(s_->model->n_vocab),
          c((int32_t) s_->tokens.size()), mem(llama_get_memory(s_->ctx)), b(llama_batch_init((k - 1) * W + 1, 0, W)),
          nodes{{root, -1, 0}}, beams{{0, 0.0, 1}} {
        llama_memory_seq_cp(mem, 0, beams[0].seq, -1, -1);
    }
    ~Tree() {
        for (int32_t id = 1; id <= 2 * W; ++id) llama_memory_seq_rm(mem, id, -1, -1);  // every beam's id goes
        llama_batch_free(b);
    }

    // Draft: K-1 levels. Level t decodes the beams' leaves one token each (the sparse FFN path is a single-token
    // one), then keeps W children over all leaves. Beam 0 stays the sparse model's greedy chain (its leaf's top
    // child), so a tree never accepts less than width 1 would on the same drafts; the other W-1 are the
    // best-scored candidates (on equal scores the better-ranked beam first, as the reference sorts).
    int32_t draft(int32_t k, TreeOutcome & out) {
        set_ffn_mode(s, SIRIUS_MODE_SPARSE);
        const float T = cp.accept_temperature;
        std::vector<llama_token> tops;
        struct Cand { int32_t beam; llama_token tok; double score; };
        std::vector<Cand> cands;
        for (int32_t t = 0; t + 1 < k; ++t) {
            cands.clear();
            for (int32_t i = 0; i < (int32_t) beams.size(); ++i) {
                const auto ts = std::chrono::steady_clock::now();
                const Node & leaf = nodes[beams[i].leaf];
                if (int32_t rc = decode_nodes(s, b, {leaf.tok}, {c + leaf.depth}, {{beams[i].seq}}, true)) return rc;
                const float * row = logits_ith(s, 0);
                const double lse = log_sum_exp(row, n_vocab, T);
                top_tokens(row, n_vocab, W, s->model->vocab, skip_eog, tops);
                for (llama_token tok : tops) cands.push_back({i, tok, beams[i].score + row[tok] / T - lse});
                out.sparse_ms += ms_since(ts);
                out.sparse_steps++;
            }
            std::stable_sort(cands.begin() + 1, cands.end(), [](const Cand & a, const Cand & x) { return a.score > x.score; });
            cands.resize(std::min<size_t>(cands.size(), W));
            bank ^= 1;
            std::vector<Beam> next;
            for (int32_t i = 0; i < (int32_t) cands.size(); ++i) {
                const Beam & parent = beams[cands[i].beam];
                nodes.push_back({cands[i].tok, parent.leaf, t + 1});
                next.push_back({(int32_t) nodes.size() - 1, cands[i].score, 1 + bank * W + i});
                llama_memory_seq_cp(mem, parent.seq, next.back().seq, -1, -1);
            }
            for (const Beam & old : beams) llama_memory_seq_rm(mem, old.seq, -1, -1);
            beams = std::move(next);
        }
        return SIRIUS_OK;
    }

    // Verify: the draft KV goes; the nodes on the final beams' paths, in depth order, in one dense batch.
    // Batch order, hence cell order: the root, the best beam's whole path, then each next beam's own nodes. The
    // CPU attention accumulates in cell order (in F16 for F16 V), so a token's KV rounds exactly as in a chain
    // only if the cells it sees lie in position order; this order keeps that for every node, and keeps the best
    // beam's accepted prefix contiguous (the usual winner), so the session's cells stay in position order.
    int32_t verify(TreeOutcome & out) {
        for (const Beam & bm : beams) llama_memory_seq_rm(mem, bm.seq, c, -1);
        paths.assign(beams.size(), {});
        std::vector<std::vector<int32_t>> on(nodes.size());  // sequences through each node
        for (int32_t i = 0; i < (int32_t) beams.size(); ++i) {
            for (int32_t n = beams[i].leaf; nodes[n].parent >= 0; n = nodes[n].parent) paths[i].push_back(n);
            std::reverse(paths[i].begin(), paths[i].end());
            for (int32_t n : paths[i]) on[n].push_back(beams[i].seq);
        }
        on[0].clear();
        for (const Beam & bm : beams) on[0].push_back(bm.seq);
        row_of.assign(nodes.size(), -1);
        std::vector<llama_token> toks;
        std::vector<int32_t> pos;
        std::vector<std::vector<int32_t>> seqs;
        auto place = [&](int32_t n) {
            if (row_of[n] >= 0) return;
            std::sort(on[n].begin(), on[n].end());
            row_of[n] = (int32_t) toks.size();
            toks.push_back(nodes[n].tok);
            pos.push_back(c + nodes[n].depth);
            seqs.push_back(on[n]);
        };
        place(0);
        for (const auto & path : paths) {
            for (int32_t n : path) place(n);
        }
        out.nodes = (int32_t) toks.size();
        set_ffn_mode(s, SIRIUS_MODE_DENSE);
        if (int32_t rc = decode_nodes(s, b, toks, pos, seqs, true)) return rc;
        rows.resize(toks.size());
        for (int32_t r = 0; r < (int32_t) rows.size(); ++r) rows[r] = logits_ith(s, r);
        return SIRIUS_OK;
    }

    // Accept: each node judged once, from its parent's dense row, along each path up to the first failure; the
    // beam with the longest accepted prefix wins (the better-scored one on ties). out gets the winning path, its
    // drafts' probabilities, the accepted count and the correction; returns the winner.
    int32_t accept(TreeOutcome & out) {
        std::vector<signed char> judged(nodes.size(), -1);
        std::vector<float> prob(nodes.size(), 0.0f);
        std::vector<DenseRow> dense(rows.size());
        for (size_t r = 0; r < rows.size(); ++r) dense[r].logits = rows[r];
        auto judge = [&](int32_t n) -> bool {
            if (judged[n] < 0) judged[n] = accept_greedy(cp, n_vocab, dense[row_of[nodes[n].parent]], nodes[n].tok, &prob[n]);
            return judged[n] > 0;
        };
        int32_t win = 0, win_j = -1;
        for (int32_t i = 0; i < (int32_t) beams.size(); ++i) {
            int32_t j = 0;
            while (j < (int32_t) paths[i].size() && judge(paths[i][j])) ++j;
            if (j > win_j) win = i, win_j = j;  // first maximum: the better-scored beam wins ties
        }
        const std::vector<int32_t> & path = paths[win];
        out.accepted = win_j;
        out.path.assign(1, nodes[0].tok);
        out.probs.clear();
        for (int32_t n : path) {
            out.path.push_back(nodes[n].tok);
            out.probs.push_back(prob[n]);
        }
        const int32_t last = win_j == 0 ? 0 : path[win_j - 1];
        out.correction = argmax(rows[row_of[last]], n_vocab);
        return win;
    }

    // Roll back: the root and the accepted nodes stay as sequence 0 (their cells hold dense KV now); the rest goes
    // (with the beams' ids, in the destructor). Only the part the winner shares with the best beam is contiguous;
    // accepted nodes past it are evaluated again as a chain, so every cell of the session stays in position order.
    int32_t keep(int32_t win, TreeOutcome & out) {
        const std::vector<int32_t> & path = paths[win];
        int32_t shared = 0;
        while (shared < out.accepted && path[shared] == paths[0][shared]) ++shared;
        llama_memory_seq_cp(mem, beams[win].seq, 0, c, c + shared + 1);
        for (int32_t id = 1; id <= 2 * W; ++id) llama_memory_seq_rm(mem, id, -1, -1);
        s->tokens.insert(s->tokens.end(), out.path.begin(), out.path.begin() + shared + 1);
        if (s->n_dense == c) s->n_dense = (int32_t) s->tokens.size();
        if (out.accepted > shared) {
            if (int32_t rc = decode(s, out.path.data() + shared + 1, out.accepted - shared, false, nullptr)) return rc;
            out.rewritten = out.accepted - shared;
        }
        return SIRIUS_OK;
    }
};

}  // namespace

int32_t tree_period(sirius_session * s, const sirius_generate_params & p, llama_token root, int32_t k, TreeOutcome & out) {
    Tree tree(s, p, root, k);
    auto t0 = std::chrono::steady_clock::now();
    // draft
    int32_t rc = tree.draft(k, out);
    out.draft_ms = ms_since(t0);
    if (rc != SIRIUS_OK) return rc;
    t0 = std::chrono::steady_clock::now();
    // verify
    if ((rc = tree.verify(out)) != SIRIUS_OK) return rc;
    // accept
    const int32_t win = tree.accept(out);
    // roll back past the winner's accepted nodes
    rc = tree.keep(win, out);
    out.verify_ms = ms_since(t0);
    return rc;
}

}  // namespace sirius
