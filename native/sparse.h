// The sparse FFN's state, shared by its builders (sparse.cpp) and the block kernels (block_ffn.cpp).
#pragma once

#include "internal.h"

#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sirius {

struct CompactTensor {
    ggml_context *        ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor *         t = nullptr;
    ggml_backend_buffer_type_t asked = nullptr;  // the buffer type it was asked for (it may have fallen back)
};

// The GGUF file mapped read-only: tensor bytes in their file layout, sharing the page cache that llama.cpp's
// own mapping already filled.
struct MappedGGUF {
    gguf_context *  g = nullptr;
    const uint8_t * base = nullptr;
    size_t          size = 0;
    size_t          data_offset = 0;

    // populate: fault every page in at once (one pass of the kernel instead of a fault per 4 KiB on first use).
    bool open(const std::string & path, bool populate = false) {
        gguf_init_params gp = {true, nullptr};
        g = gguf_init_from_file(path.c_str(), gp);
        if (!g) return false;
        data_offset = gguf_get_data_offset(g);
        int fd = ::open(path.c_str(), O_RDONLY);
        if (fd < 0) return false;
        struct stat st;
        if (fstat(fd, &st) == 0 && st.st_size > 0) {
            void * p = mmap(nullptr, (size_t) st.st_size, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
            if (p != MAP_FAILED) {
                base = static_cast<const uint8_t *>(p);
                size = (size_t) st.st_size;
            }
        }
        ::close(fd);
        return base != nullptr;
    }
    // The bytes of a tensor, or nullptr if it is absent or outside the file.
    const uint8_t * tensor(const char * name, size_t expect) const {
        int64_t id = gguf_find_tensor(g, name);
        if (id < 0 || gguf_get_tensor_size(g, id) != expect) return nullptr;
        size_t off = data_offset + gguf_get_tensor_offset(g, id);
        return off + expect <= size ? base + off : nullptr;
    }
    ~MappedGGUF() {
        if (base) munmap(const_cast<uint8_t *>(base), size);
        if (g) gguf_free(g);
    }
};

// Threshold selection, one per sparse layer: what the block kernels read at compute time.
struct BlockLayer {
    sirius_session * s = nullptr;
    int32_t          il = 0;
    ggml_tensor *    up3 = nullptr;    // up as [n_embd, G, n_groups], read in place from the mapped GGUF
    ggml_tensor *    down3 = nullptr;  // block-major copy of down, [G, n_embd, n_groups]
    float            threshold = 0.0f; // a group is computed when sum over it of |act(gate x)| >= threshold
    std::atomic<int64_t> kept{0}, seen{0};  // groups computed / considered, over all threshold decodes
};

struct SparseFFN {
    int32_t                           sparsity = SIRIUS_SPARSITY_GRIFFIN;
    std::vector<CompactTensor>        owned;
    std::vector<int32_t>              topk_blocks;  // top-k: groups kept per token, per layer (0: dense layer)
    std::vector<std::unique_ptr<BlockLayer>> blocks;  // threshold: per layer (null: dense layer)
    bool                              repack_layout = false;  // top-k: copies in the CPU repacking buffer
    std::unique_ptr<MappedGGUF>       file;         // top-k: up is read in place from the mapped GGUF
    CompactTensor                     file_view;    // top-k: the buffer over that mapping
    std::vector<ggml_tensor *>        table;   // n_layer * 6, for llama_sirius_set_ffn
    std::vector<std::vector<int32_t>> groups;  // per layer; empty = dense layer
    std::vector<int32_t>              group_size;
    sirius_sparse_info                info{};

    ~SparseFFN();
};

// The trimmed draft head of the current prompt (draft_head.cpp).
struct DraftHead {
    CompactTensor        t;
    std::vector<int32_t> ids;   // the subset, ascending: row q of t is token ids[q]
    std::vector<float>   full;  // n_vocab; -inf outside the subset, which is rewritten on every trimmed row
    ~DraftHead() {
        if (t.buf) ggml_backend_buffer_free(t.buf);
        if (t.ctx) ggml_free(t.ctx);
    }
};

// A tensor of `type`, shape ne0 x ne1, where a compact copy of `like` goes (sparse.cpp: like's buffer type, but
// plain host memory for mmapped or CPU-repacked weights).
int32_t alloc_like(const ggml_tensor * like, ggml_type type, int64_t ne0, int64_t ne1, CompactTensor & out);

// A layer's gated FFN as the sparse paths see it: the model's tensors, their GGUF names, and the group size
// G = ffn_down's quant block (at least 32 neurons), so a group is whole rows of gate/up and whole blocks of down.
struct LayerFFN {
    char          name[3][96];  // up, gate, down
    ggml_tensor * up = nullptr, * gate = nullptr, * down = nullptr;
    int64_t       n_embd = 0, n_ff = 0, G = 0;
};
bool layer_ffn(const llama_model * model, int32_t il, LayerFFN & f);

// Weight bytes one dense decode step reads (sparse.cpp).
int64_t dense_step_bytes(const MappedGGUF & file);

// The model's GGUF mapped once (populated) and kept for its lifetime; nullptr if it cannot be mapped.
std::shared_ptr<const MappedGGUF> model_file(sirius_model * m);

// block_ffn.cpp: installs (or removes) the llama_sirius_ffn_builder that threshold decodes and block-score
// recording need, after any change of either.
void block_ffn_sync(sirius_session * s);

}  // namespace sirius
